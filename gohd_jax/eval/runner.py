"""The ``gohd-eval`` run: every clip decoded and face-tracked once, the metric networks fed in
fixed-size batches gathered across clips, one report.

Per generated clip (``pairs.Pair``):

1. decode (``clips.read_clip``) and track the face (``clips.track_face``); a clip that cannot be
   read or shows no face is reported with its reason and skipped, never fatal;
2. FID: its frames (every ``fid_every``-th; whole frames, or the syncnet face crops with
   ``fid_on="faces"``) through InceptionV3 into the generated set's float64 statistics; the
   paired real video's frames (and real videos without a pair) into the real set's;
3. LSE-C / LSE-D / offset: syncnet_python's crops and MFCC windows through SyncNet, then
   ``SyncNetInstance.evaluate``'s distances (``lse.py``), with the clip's own audio track;
4. CSIM: the source portrait (or, without one, the real video's first frame) and every frame,
   aligned by five landmarks, through ArcFace; the mean cosine over frames;
5. PSNR / SSIM / L1 against the real video, frame by frame (``image_quality``);
6. with the descriptor estimators (``--deep3d --l2cs``): the clip described as ``gohd describe``
   does, then pose diversity, beat alignment, blink rate and gaze std per clip, and E-FID, P-FID
   and the pose-window FD against the real videos' descriptors (``descriptor_metrics``);
7. clips longer than a minute: a drift table, per 30 s: CSIM, mean brightness, and with
   descriptors the pose and gaze std.

The networks' items wait in ``batching.DeviceBatcher`` queues; a clip's row is finished when the
last of its items has run, so rows can finish out of order (the report is sorted by name).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from gohd_jax.eval import clips as clip_io
from gohd_jax.eval.pairs import Pair

log = logging.getLogger(__name__)

__all__ = ["EvalSettings", "Evaluator", "DRIFT_SEGMENT_S", "DRIFT_MIN_S"]

DRIFT_SEGMENT_S = 30.0
DRIFT_MIN_S = 60.0


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    fid_on: str = "frames"      # "frames" (whole frames) or "faces" (the syncnet face crops)
    fid_every: int = 1          # FID uses every n-th frame
    csim_every: int = 1         # CSIM embeds every n-th generated frame
    detect_every: int = 5       # face detection on every n-th frame (landmarks on all)
    max_frames: int | None = None  # per clip (None: all)

    def __post_init__(self):
        if self.fid_on not in ("frames", "faces"):
            raise ValueError(f"fid_on must be 'frames' or 'faces', got {self.fid_on!r}")
        for name in ("fid_every", "csim_every", "detect_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class _Row:
    """A clip's report row while its network items are in flight."""

    def __init__(self, pair: Pair, done_callback):
        self.values: dict[str, Any] = {"name": pair.name, "generated": str(pair.generated),
                                       "real": str(pair.real) if pair.real else None,
                                       "source": str(pair.source) if pair.source else None}
        self._parts = 1  # the clip's own host work; released by finish_host()
        self._done = done_callback
        self.descriptors: np.ndarray | None = None  # [T,72] when described

    def expect(self) -> None:
        self._parts += 1

    def part_done(self) -> None:
        self._parts -= 1
        if self._parts == 0:
            self._done(self)

    finish_host = part_done


class Evaluator:
    """Runs the metrics of ``networks`` (``gohd_jax.eval.networks.Networks``; any network may be
    missing: its metrics are then null) over ``pairs``; ``faces``: ``FaceModels``."""

    def __init__(self, networks, faces, settings: EvalSettings = EvalSettings(), *, progress: bool = True):
        self.nets, self.faces, self.settings, self.progress = networks, faces, settings, progress
        self.rows: list[dict] = []
        self.frames_read = 0
        self._fid_sets = None
        self._descriptors: dict[str, list[np.ndarray]] = {"generated": [], "real": []}
        if networks.inception is not None:
            from gohd_jax.eval.fid import FrechetStats

            self._fid_sets = {"generated": FrechetStats(), "real": FrechetStats()}

    # ---- FID
    def _fid_items(self, frames: np.ndarray, crops: np.ndarray | None):
        """FID's items of a clip: every ``fid_every``-th frame, or of its syncnet crops (``crops``,
        with ``fid_on="faces"``)."""
        every = self.settings.fid_every
        return self.nets.inception.prepare((crops if self.settings.fid_on == "faces" else frames)[::every])

    def _add_fid(self, key, which: str, items: np.ndarray, row: _Row | None) -> None:
        stats = self._fid_sets[which]

        def done(features):
            if features is not None:
                stats.add(features)
            if row is not None:
                row.part_done()

        if row is not None:
            row.expect()
        self.nets.inception.batcher.add(key, items, done)

    # ---- one clip
    def _clip(self, pair: Pair, finished) -> None:
        from data_pipelines.video.decode import SkipVideo

        row = _Row(pair, finished)
        s = self.settings
        try:
            clip = clip_io.read_clip(pair.generated, max_frames=s.max_frames)
            self.frames_read += len(clip.frames)
            row.values.update(frames=len(clip.frames), seconds=round(clip.seconds, 3))
            track = clip_io.track_face(clip.frames, self.faces, detect_every=s.detect_every)
            attempts = len(range(0, len(clip.frames), s.detect_every))
            row.values["face_detected"] = round(float(track.detected.sum()) / attempts, 3)
        except SkipVideo as e:
            row.values["error"] = f"unreadable ({e})"
            row.finish_host()
            return
        except clip_io.NoFace as e:
            row.values["error"] = f"no face: {e}"
            row.finish_host()
            return
        real = None
        if pair.real is not None:
            try:
                real = clip_io.read_clip(pair.real, max_frames=s.max_frames)
                self.frames_read += len(real.frames)
            except SkipVideo as e:
                row.values["real_error"] = f"unreadable ({e})"

        crops = None  # syncnet_python's face crops, made once for LSE and FID on faces
        if self.nets.syncnet is not None or (self._fid_sets is not None and s.fid_on == "faces"):
            crops = clip_io.syncnet_crops(clip.frames, track.boxes)
        if self._fid_sets is not None:
            self._add_fid(("generated", pair.name), "generated", self._fid_items(clip.frames, crops), row)
            if real is not None:
                self._add_real_fid(("real", pair.name), real, row)
        if self.nets.syncnet is not None:
            self._lse(row, clip, crops)
        if self.nets.arcface is not None:
            self._csim(row, pair, clip, track, real)
        if self.nets.estimators is not None:
            self._describe(row, clip, track, "generated")
            if real is not None:
                self._describe_real(real, row)
        if real is not None:
            from gohd_jax.eval.image_quality import clip_quality

            q = clip_quality(clip.frames, real.frames)
            row.values.update(psnr=q["psnr"], ssim=q["ssim"], l1=q["l1"], paired_frames=q["frames"],
                              real_resized=q["resized"])
        row.finish_host()

    def _describe(self, row: _Row | None, clip: clip_io.EvalClip, track, which: str) -> None:
        from gohd_jax.eval.descriptor_metrics import clip_motion, describe_frames

        desc, controls = describe_frames(clip.frames, track, self.nets.estimators)
        self._descriptors[which].append(desc)
        if row is not None:
            prefix = "" if which == "generated" else "real_"
            row.values.update({prefix + k: v for k, v in clip_motion(desc, controls, clip.audio).items()})
            if which == "generated":
                row.descriptors = desc

    def _track_real(self, real: clip_io.EvalClip, row: _Row | None):
        """The real video's face track, or None (noted in the row) when it shows no face."""
        try:
            return clip_io.track_face(real.frames, self.faces, detect_every=self.settings.detect_every)
        except clip_io.NoFace as e:
            if row is not None:
                row.values["real_error"] = f"no face: {e}"
            return None

    def _describe_real(self, real: clip_io.EvalClip, row: _Row | None) -> None:
        track = self._track_real(real, row)
        if track is not None:
            self._describe(row, real, track, "real")

    def _add_real_fid(self, key, real: clip_io.EvalClip, row: _Row | None) -> None:
        crops = None
        if self.settings.fid_on == "faces":
            track = self._track_real(real, row)
            if track is None:
                return
            crops = clip_io.syncnet_crops(real.frames, track.boxes)  # as the generated side's
        self._add_fid(key, "real", self._fid_items(real.frames, crops), row)

    def _lse(self, row: _Row, clip: clip_io.EvalClip, crops: np.ndarray) -> None:
        sync = self.nets.syncnet
        if not len(clip.audio) or not np.any(clip.audio):
            row.values["lse_error"] = "no audio track" if not len(clip.audio) else "silent audio"
            return
        try:
            lips, mfcc = sync.windows(crops, clip.audio)
        except ValueError as e:
            row.values["lse_error"] = str(e)
            return
        feats: dict[str, np.ndarray] = {}

        def done(which):
            def fn(out):
                feats[which] = out
                if len(feats) == 2:
                    row.values.update(sync.scores(feats["lip"], feats["aud"]))
                row.part_done()
            return fn

        row.expect()
        row.expect()
        sync.lip.add(("lip", row.values["name"]), lips, done("lip"))
        sync.aud.add(("aud", row.values["name"]), mfcc, done("aud"))

    def _csim(self, row: _Row, pair: Pair, clip: clip_io.EvalClip, track, real) -> None:
        arc = self.nets.arcface
        if pair.source is not None:
            from PIL import Image

            try:
                source = np.asarray(Image.open(pair.source).convert("RGB"))
            except OSError as e:
                row.values["csim_error"] = f"unreadable source image ({' '.join(str(e).split())})"
                return
            what = "source image"
        elif real is not None:
            source, what = real.frames[0], "real video's first frame"
        else:
            row.values["csim_error"] = "no source portrait (--sources) and no real video"
            return
        try:
            src_track = clip_io.track_face(source[None], self.faces, detect_every=1)
        except clip_io.NoFace:
            row.values["csim_error"] = f"no face in the {what}"
            return
        row.values["csim_reference"] = what
        every = self.settings.csim_every
        frames = arc.align(clip.frames[::every], track.landmarks[::every])
        emb: dict[str, np.ndarray] = {}

        def done(which):
            def fn(out):
                emb[which] = out
                if len(emb) == 2:
                    cos = arc.cosine(emb["source"][0], emb["frames"])
                    row.values["csim"] = float(np.mean(cos))
                    self._drift(row, cos, clip, every)
                row.part_done()
            return fn

        row.expect()
        row.expect()
        arc.batcher.add(("source", pair.name), arc.align(source[None], src_track.landmarks), done("source"))
        arc.batcher.add(("frames", pair.name), frames, done("frames"))

    def _drift(self, row: _Row, cos: np.ndarray, clip: clip_io.EvalClip, every: int) -> None:
        if clip.seconds <= DRIFT_MIN_S:
            return
        seg = int(DRIFT_SEGMENT_S * 25)
        table = []
        for start in range(0, len(clip.frames), seg):
            stop = min(len(clip.frames), start + seg)
            c = cos[start // every:-(-stop // every)]
            seg_row = {"from_s": start / 25, "to_s": stop / 25, "csim": float(np.mean(c)) if len(c) else None,
                       "brightness": float(clip.frames[start:stop].mean())}
            if row.descriptors is not None:
                d = np.asarray(row.descriptors[start:stop], np.float64)
                seg_row.update(pose_std=float(d[:, 64:70].std(0).mean()), gaze_std=float(d[:, 70:72].std(0).mean()))
            table.append(seg_row)
        row.values["drift"] = table

    # ---- the run
    def run(self, pairs: list[Pair], extra_real: list[Path] = ()) -> dict:
        from tqdm import tqdm

        finished: list[dict] = []
        t0 = time.perf_counter()
        bar = tqdm(total=len(pairs) + len(extra_real), unit="clip", disable=not self.progress,
                   desc="gohd-eval")

        def on_finished(row: _Row):
            finished.append(row.values)

        for pair in pairs:
            self._clip(pair, on_finished)
            bar.update(1)
            bar.set_postfix(frames_per_s=f"{self.frames_read / max(time.perf_counter() - t0, 1e-9):.1f}")
        if self._fid_sets is not None or self.nets.estimators is not None:
            from data_pipelines.video.decode import SkipVideo

            for path in extra_real:
                try:
                    real = clip_io.read_clip(path, max_frames=self.settings.max_frames)
                    self.frames_read += len(real.frames)
                    if self._fid_sets is not None:
                        self._add_real_fid(("real", str(path)), real, None)
                    if self.nets.estimators is not None:
                        self._describe_real(real, None)
                except SkipVideo as e:
                    log.warning("%s: skipped for the real set: %s", path, e)
                bar.update(1)
        else:
            bar.update(len(extra_real))
        for batcher in self._batchers():
            batcher.flush()
        bar.close()
        self.rows = sorted(finished, key=lambda r: r["name"])
        return self.summary(time.perf_counter() - t0)

    def _batchers(self):
        n = self.nets
        if n.inception is not None:
            yield n.inception.batcher
        if n.syncnet is not None:
            yield n.syncnet.lip
            yield n.syncnet.aud
        if n.arcface is not None:
            yield n.arcface.batcher

    def summary(self, seconds: float) -> dict:
        ok = [r for r in self.rows if "error" not in r]

        def mean(key):
            vals = [r[key] for r in ok if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        fid = None
        counts = {}
        if self._fid_sets is not None:
            gen, real = self._fid_sets["generated"], self._fid_sets["real"]
            counts = {"fid_generated_frames": gen.count, "fid_real_frames": real.count}
            if gen.count >= 2 and real.count >= 2:
                from gohd_jax.eval.fid import frechet_distance

                fid = float(frechet_distance(gen.mean(), gen.cov(), real.mean(), real.cov()))
        summary = {"fid": fid, "lse_c": mean("lse_c"), "lse_d": mean("lse_d"), "csim": mean("csim"),
                   "psnr": mean("psnr"), "ssim": mean("ssim")}
        if self.nets.estimators is not None:
            from gohd_jax.eval.descriptor_metrics import set_distances

            summary.update(set_distances(self._descriptors["generated"], self._descriptors["real"]))
            for prefix in ("", "real_"):  # BAS over the set: clips weighted by their motion beats
                beats = [(r[prefix + "bas"], r[prefix + "motion_beats"]) for r in ok
                         if r.get(prefix + "bas") is not None]
                total = sum(n for _, n in beats)
                summary[prefix + "bas"] = sum(b * n for b, n in beats) / total if total else None
            for key in ("pose_diversity", "blink_rate", "gaze_std"):
                summary[key] = mean(key)
                summary["real_" + key] = mean("real_" + key)
            counts.update(described_generated_frames=sum(map(len, self._descriptors["generated"])),
                          described_real_frames=sum(map(len, self._descriptors["real"])))
        return {"summary": summary,
                "counts": {"clips": len(self.rows), "clips_scored": len(ok),
                           "clips_skipped": len(self.rows) - len(ok), "frames_read": self.frames_read, **counts},
                "settings": dataclasses.asdict(self.settings),
                "seconds": round(seconds, 2),
                "clips": self.rows}
