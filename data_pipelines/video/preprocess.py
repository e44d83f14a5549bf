"""One video -> clip records, and the resumable, sharded writer over a list of videos.

Per video, two streamed passes (memory stays constant on long videos: one decoded frame, plus
the clip being assembled, at most ``max_seconds`` of 256x256 JPEGs):

1. decode at 25 fps, detect the face (dlib HOG, on a copy at most ``detect_size`` px on its longer
   side), its 68 landmarks (full resolution), a 32x32 thumbnail -> ``segment`` the frames into
   clips, each with a fixed crop: GoHD's official crop of the clip's median detector box.
2. decode again; for each clip frame: the 256x256 crop, the landmarks moved into it (controls:
   blink ratio and brows, ``data_pipelines.controls``), the estimators' inputs (Deep3DFaceRecon's
   5-point alignment, L2CS's face crop), batched through the jitted estimators -> descriptors;
   at the clip's end its 16 kHz audio, both mels, and the record.

Each record's ``aux`` holds per frame: ``crop_box`` [T,4] (the frame-pixel crop, int32),
``landmarks`` [T,68,2] (float32, crop pixels) and ``source_frame`` [T] (the 25 fps index in the
video).

Output layout (a normal clip dataset: ``ClipDataset`` and the Grain pipelines read it)::

    OUT/plan.json                           settings (a rerun with other settings is refused)
    OUT/videos/<key>.array_record           one video's clips
    OUT/videos/<key>.array_record.done.json its commit marker: records, drops, timing
    OUT/manifest.json                       built from every marker: at the end of a run of one
                                            process; after a sharded run, by ``merge`` (one
                                            final step, ``gohd-preprocess --merge``); by the
                                            last step of the Beam pipeline (``video.beam``)
    OUT/report-<index>-of-<count>.json      that process's report (report-beam.json on Beam)

A video counts as done once its marker exists (a video without clips has a marker and no shard)
and the file it names has the marker's size (``output.Output``), so a rerun skips finished
videos and a crash loses at most the video in progress. Two drivers run ``process_video``: the
local one here (``preprocess``), and the Beam pipeline (``data_pipelines.video.beam``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from data_pipelines import records, schema
from data_pipelines.video.decode import AudioStream, SkipVideo, VIDEO_EXTENSIONS, frames_25fps, open_video
from data_pipelines.video.describe import FrameDescriber, StageTimer, detect_faces
from data_pipelines.video.faces import FaceModels, crop_and_resize, official_crop_box, to_crop
from data_pipelines.video.output import VIDEOS, LocalOutput, Output, record_name
from data_pipelines.video.segment import Clip, SegmentConfig, segment

log = logging.getLogger(__name__)

__all__ = ["PreprocessConfig", "StageTimer", "process_video", "preprocess", "list_videos", "video_key",
           "identity_of", "STAGES", "DEFAULT_IDENTITY_REGEX"]

STAGES = ("decode", "detect", "crop", "landmarks", "estimators", "mel", "write")
# "12_WRA_RoyBlunt_003" -> "WRA_RoyBlunt": a leading index and a trailing clip number dropped.
DEFAULT_IDENTITY_REGEX = r"^(?:\d+_)?(?P<id>.+?)(?:_\d+)?$"


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    segment: SegmentConfig = SegmentConfig()
    detect_size: int = 640
    jpeg_quality: int = 95
    compression: str = "snappy"
    identity_regex: str = DEFAULT_IDENTITY_REGEX

    def plan(self) -> dict:
        return {"kind": "video", "segment": dataclasses.asdict(self.segment),
                "detect_size": self.detect_size, "identity_regex": self.identity_regex}


def video_key(path: str | Path) -> str:
    """A stable file-name-safe key: the stem plus a hash of the resolved path (of the URL itself
    for a path such as ``gs://bucket/a.mp4``)."""
    p = Path(path)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem)[:60] or "video"
    full = str(path) if "://" in str(path) else str(p.resolve())
    return f"{stem}-{hashlib.sha1(full.encode()).hexdigest()[:10]}"


def identity_of(path: str | Path, regex: str = DEFAULT_IDENTITY_REGEX) -> str:
    m = re.match(regex, Path(path).stem)
    if m is None:
        return Path(path).stem
    return m.groupdict().get("id") or (m.group(1) if m.groups() else m.group(0))


def list_videos(sources: Iterable[str]) -> list[str]:
    """Folders (searched recursively for video extensions), list files (``.txt``/``.lst``: one path
    per line, relative to the list's folder, or a URL such as ``gs://b/v.mp4`` for the Beam
    driver) and plain paths -> a sorted, de-duplicated list."""
    out: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            out += [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file()]
        elif p.suffix.lower() in (".txt", ".lst") and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    out.append(line if "://" in line else str(q if q.is_absolute() else p.parent / q))
        else:
            out.append(str(p))  # a missing file becomes a counted skip, not an error
    return sorted(dict.fromkeys(out))


def _crop_of(clip: Clip, info) -> tuple[int, int, int, int]:
    """The clip's fixed crop: GoHD's official crop of the median detector box."""
    return official_crop_box(np.median(clip.detections, axis=0), info.height, info.width)


class _ClipBuilder:
    """Accumulates one clip's frames: the JPEG crops, and their descriptors (``FrameDescriber``)."""

    def __init__(self, clip: Clip, crop, estimators, quality: int, timer: StageTimer):
        self.clip, self.crop, self.quality, self.timer = clip, crop, quality, timer
        self.jpegs: list[bytes] = []
        self.describer = FrameDescriber(estimators, timer)

    def add(self, img: np.ndarray, i: int) -> None:
        with self.timer("crop", 1):
            face = crop_and_resize(img, self.crop)
            self.jpegs.append(schema.encode_jpeg(face, self.quality))
        self.describer.add(face, to_crop(self.clip.landmarks[i], self.crop))

    def truncate(self, t: int) -> None:
        """Keeps the first ``t`` frames (the audio ended before the clip did)."""
        self.jpegs = self.jpegs[:t]
        self.describer.truncate(t)

    def descriptors(self) -> np.ndarray:
        return self.describer.descriptors()


def _clip_record(builder: _ClipBuilder, wav: np.ndarray, clip_id: str, identity: str, source: str,
                 timer: StageTimer) -> tuple[list[bytes], dict]:
    from data_pipelines import audio

    t = len(builder.jpegs)
    desc = builder.descriptors()
    with timer("mel", t):
        mel80, mel100 = audio.wav2lip_mel(wav), audio.mel_100hz(wav)
    with timer("write", t):
        clip = {"clip_id": clip_id, "identity_id": identity, "source_id": source, "frames": builder.jpegs,
                "audio": wav, "descriptors": desc, "controls": np.stack(builder.describer.controls),
                "mel_80hz": mel80, "mel_100hz": mel100,
                "aux": {"crop_box": np.tile(np.asarray(builder.crop, np.int32), (t, 1)),
                        "landmarks": np.stack(builder.describer.landmarks),
                        "source_frame": np.arange(builder.clip.start, builder.clip.start + t, dtype=np.int32)}}
        recs, digest = schema.encode_clip(clip)
    return recs, records.index_entry(clip, recs, digest)


def process_video(path: str, out: Output | str | Path, faces: FaceModels, estimators, cfg: PreprocessConfig,
                  work: Path | None = None, source: str | None = None) -> dict:
    """One video -> its clip records committed to ``out`` (``videos/<key>.array_record``, then its
    marker; ``output.Output``); returns the marker. The records are written to a temporary file in
    ``work`` (default: ``out``'s own videos folder, when ``out`` is local) and put in place by
    ``out.commit``.

    SkipVideo reasons land in the marker (``skipped``), never as exceptions. Any other exception
    (a bug, a decoder crash, a transient read error) becomes a skip with reason ``error`` whose
    marker is *not* committed (``marker["committed"]`` False), so that a rerun tries the video
    again; the manifest of this run still lists it among the skips.

    ``source``: the video's own path when ``path`` is a local copy of it (a remote video on a Beam
    worker); its key, name and identity come from ``source``."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out = out if isinstance(out, Output) else LocalOutput(out)
    if work is None:
        if not isinstance(out, LocalOutput):
            raise ValueError("process_video: give `work` (a local folder) for a non-local output")
        work = out.path / VIDEOS
    source = str(source or path)
    key = video_key(source)
    name = record_name(key)
    timer = StageTimer()
    marker = {"file": name, "video": _name(source), "num_records": 0, "records": [], "skipped": [],
              "drops": {}, "num_video_frames": 0}
    t0 = time.perf_counter()
    tmp = Path(work) / f"{key}.array_record.tmp"  # one process per video: a retry overwrites it
    committed = True
    try:
        info = open_video(path)
        if info.variable_frame_rate:
            log.info("%s: variable frame rate (average %.2f fps): resampled to 25 fps by timestamp",
                     path, info.fps)
        if info.rotation:
            log.info("%s: display rotation %d degrees applied", path, info.rotation)
        boxes, lms, scores = detect_faces(info, faces, cfg.detect_size, timer)
        marker["num_video_frames"] = len(boxes)
        if not boxes:
            raise SkipVideo("corrupt", "no decodable frames")
        if all(b is None for b in boxes):
            raise SkipVideo("no_face", f"no face found in {len(boxes)} frames")
        clips, drops = segment(boxes, lms, scores, cfg.segment)
        marker["drops"] = drops
        if not clips:
            raise SkipVideo("no_usable_clip", f"no clip of >= {cfg.segment.min_seconds} s "
                            f"(boundaries: {drops})")
        identity = identity_of(source, cfg.identity_regex)
        writer = ArrayRecordWriter(str(tmp), f"group_size:1,{cfg.compression}")
        position = 0  # the next record's index in this video's shard
        try:
            with AudioStream(info) as audio_stream:
                frames = frames_25fps(info)
                k, img = -1, None
                for n, clip in enumerate(clips):
                    crop = _crop_of(clip, info)
                    builder = _ClipBuilder(clip, crop, estimators, cfg.jpeg_quality, timer)
                    for i in range(clip.num_frames):
                        while k < clip.start + i:
                            with timer("decode", 1):
                                item = next(frames, None)
                            if item is None:
                                break
                            k, img = item
                        if k < clip.start + i:
                            break  # the second decode ended early (a truncated file)
                        builder.add(img, i)
                    t = len(builder.jpegs)
                    with timer("mel", 0):
                        wav = audio_stream.read(clip.start * schema.SAMPLES_PER_FRAME, t * schema.SAMPLES_PER_FRAME)
                        end = audio_stream.exhausted_at
                    if end is not None and end < (clip.start + t) * schema.SAMPLES_PER_FRAME:
                        t = max(0, end // schema.SAMPLES_PER_FRAME - clip.start)
                        marker["drops"]["audio_ended"] = marker["drops"].get("audio_ended", 0) + 1
                        builder.truncate(t)
                        wav = wav[:t * schema.SAMPLES_PER_FRAME]
                    if t < cfg.segment.min_seconds * schema.FPS:
                        marker["drops"]["too_short"] = marker["drops"].get("too_short", 0) + 1
                        continue
                    recs, entry = _clip_record(builder, wav, f"{key}-{n:03d}", identity, _name(source), timer)
                    with timer("write", 0):
                        position = records.append_clip(writer, recs, entry, position)
                    marker["records"].append(entry)
        finally:
            writer.close()
        if not marker["records"]:
            raise SkipVideo("no_usable_clip", f"every clip was dropped ({marker['drops']})")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        marker["sha256"] = records._sha256_file(tmp)
        marker["bytes"] = tmp.stat().st_size
        marker["num_records"] = len(marker["records"])
    except SkipVideo as e:
        log.warning("skipping %s: %s", path, e)
        marker.update(file=None, num_records=0, records=[],
                      skipped=[{"video": _name(source), "reason": e.reason, "detail": e.detail}])
    except Exception as e:  # never fatal to the run: a counted skip, retried by the next run
        log.exception("skipping %s after an error", path)
        err = error_marker(source, e)
        marker.update({k: err[k] for k in ("file", "num_records", "records", "skipped")})
        committed = False
    marker["timing"] = timer.as_dict()
    marker["wall_seconds"] = round(time.perf_counter() - t0, 3)
    try:
        if committed:
            out.commit(key, tmp if marker["num_records"] else None, marker)
    finally:
        tmp.unlink(missing_ok=True)
    return {**marker, "committed": committed}


def error_marker(source: str, e: Exception) -> dict:
    """The marker of a video that raised (``process_video``'s docstring): a skip, not committed."""
    return {"file": None, "video": _name(source), "num_records": 0, "records": [], "drops": {},
            "skipped": [{"video": _name(source), "reason": "error", "detail": f"{type(e).__name__}: {e}"}],
            "num_video_frames": 0, "timing": StageTimer().as_dict(), "wall_seconds": 0.0, "committed": False}


def _name(path: str) -> str:
    """A video's file name (local paths and URLs such as gs://bucket/a/b.mp4 alike)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def write_manifest(root: Path | Output, plan: dict, errors: list[dict] | None = None) -> dict:
    """Rebuilds ``manifest.json`` from every finished video's marker in ``root``."""
    out = root if isinstance(root, Output) else LocalOutput(root)
    return out.write_manifest(plan, errors=errors)


class ShardsUnfinished(records.DatasetError):
    """``merge`` found shards of the run without their report (still running, or failed)."""


def merge(out: str | Path) -> dict:
    """The final step of a sharded run: checks that every shard of the run finished (its report
    ``report-<i>-of-<n>.json`` exists for every i) and writes ``manifest.json`` from every video's
    marker, once, so shards finishing together cannot overwrite each other's manifest."""
    root = Path(out)
    if not (root / records.PLAN).is_file():
        raise records.DatasetError(f"{root}: no {records.PLAN}; not a gohd-preprocess output folder")
    reports = sorted(root.glob("report-*-of-*.json"))
    counts = {int(m.group(2)) for p in reports if (m := re.match(r"report-(\d+)-of-(\d+)\.json", p.name))}
    if not counts:
        raise ShardsUnfinished(f"{root}: no shard has finished (no report-*-of-*.json)")
    n = max(counts)
    missing = [i for i in range(n) if not (root / f"report-{i}-of-{n}.json").is_file()]
    if missing:
        raise ShardsUnfinished(f"{root}: shards {', '.join(map(str, missing))} of {n} have not finished; "
                               f"merge after every shard has")
    plan = json.loads((root / records.PLAN).read_text())
    errors = [e for i in range(n) for e in json.loads((root / f"report-{i}-of-{n}.json").read_text()).get("errors", [])]
    return write_manifest(root, plan, errors=errors)


def plan_of(cfg: PreprocessConfig) -> dict:
    """``plan.json``: the settings a rerun over the same output must share."""
    plan = {"format": records.FORMAT, "schema_version": schema.SCHEMA_VERSION, "num_items": None,
            "clips_per_shard": None, "jpeg_quality": cfg.jpeg_quality, "compression": cfg.compression,
            "dataset": cfg.plan()}
    return json.loads(json.dumps(plan, sort_keys=True))


def run_report(markers: list[dict], wall: float, manifest: dict | None, **head) -> dict:
    """A run's report from the markers of the videos it processed (``process_video``'s returns)."""
    timer, skips, drops = StageTimer(), Counter(), Counter()
    for m in markers:
        timer.merge(m["timing"])
        skips.update(s["reason"] for s in m["skipped"])
        drops.update(m["drops"])
    frames = sum(m["num_video_frames"] for m in markers)
    n = len(markers)
    return {**head, "videos_processed": n, "videos_with_clips": n - sum(skips.values()),
            "videos_skipped": dict(skips), "clips_written": sum(m["num_records"] for m in markers),
            "clip_drops": dict(drops), "video_frames_decoded": frames, "wall_seconds": round(wall, 2),
            "videos_per_second": round(n / max(wall, 1e-9), 4),
            "frames_per_second": round(frames / max(wall, 1e-9), 2), "stages": timer.as_dict(),
            "errors": [s for m in markers if not m.get("committed", True) for s in m["skipped"]],
            "dataset_clips": manifest and manifest["num_clips"], "dataset_frames": manifest and manifest["num_frames"]}


def preprocess(videos: list[str], out: str | Path, *, faces: FaceModels, estimators,
               cfg: PreprocessConfig = PreprocessConfig(), shard_index: int = 0, num_shards: int = 1,
               progress: bool = True) -> dict:
    """Processes this process's share of ``videos`` (every ``num_shards``-th, from ``shard_index``)
    into ``out``; returns the report (also written to ``out/report-<i>-of-<n>.json``). With one
    shard the manifest is written at the end; with several, ``merge(out)`` writes it once every
    shard has finished (the report's ``dataset_clips`` is then None)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    output = LocalOutput(out)
    plan = plan_of(cfg)
    output.check_plan(plan)
    mine = videos[shard_index::num_shards]
    todo = [v for v in mine if output.done(video_key(v)) is None]
    log.info("%d videos in the list, %d for shard %d of %d, %d already done", len(videos), len(mine),
             shard_index, num_shards, len(mine) - len(todo))
    done: list[dict] = []
    clips = skipped = frames = 0  # running totals for the bar
    t0 = time.perf_counter()
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="video", desc="preprocessing", dynamic_ncols=True)
    try:
        for path in todo:
            m = process_video(path, output, faces, estimators, cfg)
            done.append(m)
            clips += m["num_records"]
            skipped += len(m["skipped"])
            frames += m["num_video_frames"]
            if bar is not None:
                dt = time.perf_counter() - t0
                bar.set_postfix(clips=clips, skipped=skipped, fps=f"{frames / max(dt, 1e-9):.1f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    errors = [s for m in done if not m["committed"] for s in m["skipped"]]
    manifest = output.write_manifest(plan, errors=errors) if num_shards == 1 else None
    report = run_report(done, wall, manifest, driver="local", shard_index=shard_index, num_shards=num_shards,
                        videos_in_list=len(videos), videos_this_shard=len(mine),
                        videos_already_done=len(mine) - len(todo))
    output.write_json(f"report-{shard_index}-of-{num_shards}.json", report)
    return report
