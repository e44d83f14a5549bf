"""Grain pipelines: what each training stage samples from the clip records.

Every pipeline is ``clips -> eligible clip list -> shuffle -> repeat ->
random_map(sample) -> this process's positions -> batch -> (worker processes)``.
Samples are a deterministic function of (seed, position in the global stream):
the processes of a run read interleaved positions of one stream (process p of P
reads p, p + P, ...), so they draw different clips, windows and labels, and the
global batch does not depend on the number of processes. A run is reproducible,
and the iterator's state (``it.get_state()``, or
``grain.checkpoint.CheckpointSave(it)`` in an Orbax checkpoint) restores the
stream exactly.

Stages and their samples (W = window length, frames at 25 fps):

* ``animator``: ``source`` and ``target`` uint8 [H,W,3] RGB frames of one clip
  (decode in the step as x / 127.5 - 1), ``descriptor_window`` float32 [27,72]
  centred on the target frame with indices clamped at the clip ends.
* ``motion``: ``cond`` float32 [W,320] (4 mel rows x 80 bins per frame; the
  100 Hz mel by default, or the release's 80 Hz mel read as 100 Hz with
  ``condition="release"``), ``pose`` float32 [W,6] as residual to the window's
  first frame, ``gaze`` float32 [W,2] absolute, ``pose0`` [6] and ``gaze0`` [2]
  of the first frame. W = 150 by default.
* ``expression``: ``mel_windows`` float32 [W,80,16] (Wav2Lip windows),
  ``expression`` float32 [W,64], ``controls`` float32 [W,21], ``exp0`` float32
  [64] (the window's first frame). W = 30 by default.
* ``sync`` (the lip-sync expert): ``mel`` float32 [80,16], the Wav2Lip window of a frame f (0.2 s
  centred on it), ``faces`` uint8 [W,H,W_img,3], frames f-2 .. f+2 (W = 5; the expert crops
  its mouth box from them, ``SyncNetConfig.face_box``), ``expression`` float32 [W,64] of the same
  frames (what the coefficient-space expert reads; ``sync_faces=False`` leaves the faces out),
  and ``label`` float32: 1 with probability 1/2 (the mel is frame f's), else 0 and the mel is
  that of a frame g of the same clip with |g - f| >= W (``offset`` = g - f, int32). Clips need
  3 W frames. With ``sync_negatives=K``, also ``mel_candidates`` float32 [1+K,80,16]: frame f's
  window, then those of K frames of the same clip >= W away (the multi-way expert's task).

Every sample also carries ``clip_index`` and ``start`` (int32) for tracing.
Samplers read a clip through ``RecordClip`` (``ClipDataset.view``): only the time chunks that
hold their rows and the frames they decode (``schema.ClipLayout``); other clip sources (TFDS)
are whole dicts, seen through ``schema.DictClip``.
Clips shorter than the window are left out when the pipeline is built (logged
with their count); a record that turns out corrupt is skipped with a logged
warning and a running count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence

import grain
import numpy as np

from data_pipelines import records, schema
from data_pipelines.records import ClipDataset, DatasetError
from data_pipelines.shuffle import EpochShuffle
from gohd_jax.eval.mouth_motion import mouth_box

log = logging.getLogger(__name__)

STAGES = ("animator", "motion", "expression", "sync")
DEFAULT_WINDOW = {"animator": 27, "motion": 150, "expression": 30, "sync": 5}
SPLITS = ("train", "heldout", "all")


def heldout_identities(identity_ids: Sequence[str], fraction: float) -> set[str]:
    """The identities held out for evaluation: a fixed, seed-free choice of
    ``max(1, round(fraction * n))`` identities (by sha256 of the id), none when
    there is only one identity or ``fraction`` is 0."""
    ids = sorted(set(identity_ids))
    if fraction <= 0 or len(ids) < 2:
        return set()
    k = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(sorted(ids, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:k])


def select_clips(index: Sequence[dict], *, split: str, heldout_fraction: float, min_frames: int) -> list[int]:
    """Indices of the clips in ``split`` that have at least ``min_frames`` frames."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    held = heldout_identities([r["identity_id"] for r in index], heldout_fraction)
    chosen, short = [], 0
    for i, r in enumerate(index):
        if split == "train" and r["identity_id"] in held or split == "heldout" and r["identity_id"] not in held:
            continue
        if r["num_frames"] < min_frames:
            short += 1
            continue
        chosen.append(i)
    if short:
        log.warning("left out %d clips shorter than %d frames", short, min_frames)
    return chosen


@dataclasses.dataclass
class _Sampler(grain.transforms.RandomMap):
    """Base: reads the clip, handles bad records, delegates to ``sample``."""

    clips: ClipDataset  # or any source with its view(i), or with __getitem__ giving clip dicts
    window: int
    bad_records: int = 0
    count_bytes: bool = False  # add ``bytes_read`` (int64): the sample's ArrayRecord bytes

    def random_map(self, clip_index, rng: np.random.Generator):
        before = records.bytes_read()
        try:
            i = int(clip_index)
            clip = self.clips.view(i) if hasattr(self.clips, "view") else schema.DictClip(self.clips[i])
            out = self.sample(clip, rng)
        except schema.BadRecordError as e:
            self.bad_records += 1
            log.warning("skipping bad record (%d so far in this process): %s", self.bad_records, e)
            return None
        out["clip_index"] = np.int32(clip_index)
        if self.count_bytes:
            out["bytes_read"] = np.int64(records.bytes_read() - before)
        return out

    def sample(self, clip, rng: np.random.Generator) -> dict:
        """``clip``: a ``RecordClip`` or ``schema.DictClip``."""
        raise NotImplementedError

    def _start(self, clip, rng: np.random.Generator) -> int:
        t = clip.num_frames
        if t < self.window:
            raise schema.BadRecordError(f"clip {clip.clip_id} has {t} frames, fewer than the window "
                                        f"{self.window} (the manifest said otherwise)")
        return int(rng.integers(0, t - self.window + 1))


@dataclasses.dataclass
class AnimatorSampler(_Sampler):
    """(source frame, target frame, descriptor window centred on the target).

    The target is a uniformly random frame of the clip, except, with probability
    ``expression_pairs``, the frame within ``expression_radius`` frames of the source whose
    expression coefficients differ most from the source's (L1 over the 64): pairs that differ at
    the mouth and eyes, where uniform pairs mostly differ by head pose and copying the source
    loses little (BENCHMARKS.md "make demo": without them the tiny animator leaves the mouth
    still). With ``expression_pairs`` 0 the samples are those of earlier versions.

    With ``mouth_margin`` >= 0 the sample also holds ``mouth_box``, int32 [4] (row0, row1, col0,
    col1; half-open, frame pixels): the smallest box holding the mouth landmarks (iBUG 48-67 of
    ``aux/landmarks``) of both frames, grown by ``mouth_margin`` pixels and clipped to the frame
    (``gohd_jax.eval.mouth_motion.mouth_box``), for the animator's mouth loss; a clip without
    landmarks is then an error (``DatasetError``), not a skipped record."""

    expression_pairs: float = 0.0
    expression_radius: int = 12
    mouth_margin: int = -1

    def sample(self, clip, rng):
        t = clip.num_frames
        target, source = (int(x) for x in rng.integers(0, t, size=2))
        if self.expression_pairs > 0 and rng.random() < self.expression_pairs:
            lo, hi = max(0, source - self.expression_radius), min(t, source + self.expression_radius + 1)
            exp = np.asarray(clip.rows("descriptors", np.arange(lo, hi)), np.float32)[:, schema.EXPRESSION]
            target = lo + int(np.argmax(np.abs(exp - exp[source - lo]).sum(axis=1)))
        radius = self.window // 2
        idx = np.clip(np.arange(target - radius, target + radius + 1), 0, t - 1)
        source_jpeg, target_jpeg = clip.frames([source, target])  # one request for both
        out = {"source": schema.decode_jpeg(source_jpeg), "target": schema.decode_jpeg(target_jpeg),
               "descriptor_window": np.asarray(clip.rows("descriptors", idx), np.float32),
               "start": np.int32(target)}
        if self.mouth_margin >= 0:
            try:
                lm = np.asarray(clip.rows("aux/landmarks", [source, target]), np.float32)
            except KeyError as e:  # the dataset's, not one record's: stop with what to do
                raise DatasetError(f"clip {clip.clip_id} has no aux/landmarks, which the animator's mouth loss "
                                   f"needs (gohd-preprocess and the synthetic set write them); train without "
                                   f"it: --config.task.loss.mouth=0") from e
            h, w = out["target"].shape[:2]
            if h != w:
                raise schema.BadRecordError(f"clip {clip.clip_id}: the mouth loss needs square frames, got {h}x{w}")
            out["mouth_box"] = np.asarray(mouth_box(lm, h, self.mouth_margin), np.int32)
        return out


@dataclasses.dataclass
class MotionSampler(_Sampler):
    """(mel condition, pose residual to the first frame, gaze, first-frame pose and gaze)."""

    condition: str = "mel100"

    def sample(self, clip, rng):
        from data_pipelines import audio

        start = self._start(clip, rng)
        t = clip.num_frames
        sl = slice(start, start + self.window)
        if self.condition == "mel100":
            field, rows = "mel_100hz", audio.frame_cond_100hz_rows
        else:
            field, rows = "mel_80hz", audio.frame_cond_release_rows
        cond = clip.rows(field, rows(clip.num_rows(field), t, frames=sl)).reshape(self.window, audio.COND_DIM)
        desc = clip.rows("descriptors", np.arange(start, start + self.window))
        pose = np.asarray(desc[:, schema.POSE], np.float32)
        gaze = np.asarray(desc[:, schema.GAZE], np.float32)
        return {"cond": np.asarray(cond, np.float32), "pose": pose - pose[0], "gaze": gaze,
                "pose0": pose[0].copy(), "gaze0": gaze[0].copy(), "start": np.int32(start)}


@dataclasses.dataclass
class ExpressionSampler(_Sampler):
    """(Wav2Lip mel windows, expression, controls, first-frame expression)."""

    def sample(self, clip, rng):
        start = self._start(clip, rng)
        frames = np.arange(start, start + self.window)
        mels = _mel_windows(clip, frames)
        expression = np.asarray(clip.rows("descriptors", frames)[:, schema.EXPRESSION], np.float32)
        return {"mel_windows": mels, "expression": expression,
                "controls": np.asarray(clip.rows("controls", frames), np.float32), "exp0": expression[0].copy(),
                "start": np.int32(start)}


@dataclasses.dataclass
class SyncSampler(_Sampler):
    """(a frame's mel window, the W face crops around it) in or out of sync;
    with ``negatives`` > 0 also ``mel_candidates`` [1 + negatives, 80, 16]: frame f's window
    first, then those of ``negatives`` frames >= W away (the multi-way expert's choice)."""

    negatives: int = 0
    faces: bool = True  # False: no JPEG decoding (the coefficient-space expert reads expression only)

    def sample(self, clip, rng):
        t, w = clip.num_frames, self.window
        if t < 3 * w:
            raise schema.BadRecordError(f"clip {clip.clip_id} has {t} frames, fewer than {3 * w}")
        half = w // 2
        f = int(rng.integers(half, t - (w - half) + 1))
        in_sync = bool(rng.random() < 0.5)
        far = np.concatenate([np.arange(0, max(f - w + 1, 0)), np.arange(min(f + w, t), t)])
        g = f if in_sync else int(far[rng.integers(0, len(far))])  # shifted: uniform over far frames
        negs = rng.choice(far, self.negatives, replace=len(far) < self.negatives) if self.negatives else []
        mels = _mel_windows(clip, [g, f, *negs])
        expression = np.asarray(clip.rows("descriptors", np.arange(f - half, f - half + w))[:, schema.EXPRESSION],
                                np.float32)
        out = {"mel": mels[0], "expression": expression,
               "label": np.float32(in_sync), "offset": np.int32(g - f), "start": np.int32(f)}
        if self.faces:
            window = range(f - half, f - half + w)
            out["faces"] = np.stack([schema.decode_jpeg(b) for b in clip.frames(window)])
        if self.negatives:
            out["mel_candidates"] = np.asarray(mels[1:], np.float32)
        return out


def _mel_windows(clip, frames) -> np.ndarray:
    """The Wav2Lip mel windows of ``frames`` of a clip (``audio.frame_mel_windows``), reading only
    their rows: float32 [n, 80, 16]."""
    from data_pipelines import audio

    rows = audio.frame_mel_window_rows(clip.num_rows("mel_80hz"), clip.num_frames, frames=np.asarray(frames))
    return np.ascontiguousarray(clip.rows("mel_80hz", rows).transpose(0, 2, 1), dtype=np.float32)


_SAMPLERS = {"animator": AnimatorSampler, "motion": MotionSampler, "expression": ExpressionSampler,
             "sync": SyncSampler}


def make_dataset(stage: str, data_dir, *, seed: int = 0, window: int | None = None, split: str = "train",
                 heldout_fraction: float = 0.25, num_epochs: int | None = None,
                 shard_index: int | None = None, shard_count: int | None = None,
                 condition: str = "mel100", sync_negatives: int = 0,
                 sync_faces: bool = True, count_bytes: bool = False, expression_pairs: float = 0.0,
                 expression_radius: int = 12, mouth_margin: int = -1) -> grain.MapDataset:
    """The unbatched sample stream of ``stage`` (see the module docstring).

    ``data_dir`` is a clip dataset folder, or any clip source with ``index`` and ``view(i)`` (a
    ``ClipDataset``, ``data_pipelines.tfds.TfdsClips``) or ``__getitem__`` giving clip dicts. The global stream
    (the whole clip list, shuffled, repeated, sampled) is split over ``shard_count`` processes
    (default: the JAX process count) last, by position; ``num_epochs=None`` repeats forever.
    ``count_bytes`` adds ``bytes_read`` to every sample (``gohd-data bench``).
    ``expression_pairs`` / ``expression_radius``: the animator's pairs; ``mouth_margin`` >= 0 adds
    their ``mouth_box`` (``AnimatorSampler``).
    """
    if stage not in _SAMPLERS:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    if condition not in ("mel100", "release"):
        raise ValueError(f"condition must be 'mel100' or 'release', got {condition!r}")
    clips = ClipDataset(data_dir) if isinstance(data_dir, (str, os.PathLike)) else data_dir
    window = window or DEFAULT_WINDOW[stage]
    if shard_index is None or shard_count is None:
        import jax
        shard_index, shard_count = jax.process_index(), jax.process_count()
    min_frames = {"animator": 1, "sync": 3 * window}.get(stage, window)
    eligible = select_clips(clips.index, split=split, heldout_fraction=heldout_fraction, min_frames=min_frames)
    if not eligible:
        raise DatasetError(f"{clips.root}: no {split!r} clips with >= {min_frames} frames "
                           f"({len(clips.index)} clips in all)")
    kwargs = {"condition": condition} if stage == "motion" else {}
    if stage == "sync":
        kwargs = {"negatives": int(sync_negatives), "faces": bool(sync_faces)}
    if stage == "animator":
        if not 0.0 <= expression_pairs <= 1.0 or expression_radius < 1:
            raise ValueError(f"expression_pairs must be in [0, 1] and expression_radius >= 1, got "
                             f"{expression_pairs} and {expression_radius}")
        kwargs = {"expression_pairs": float(expression_pairs), "expression_radius": int(expression_radius),
                  "mouth_margin": int(mouth_margin)}
    sampler = _SAMPLERS[stage](clips=clips, window=window, count_bytes=count_bytes, **kwargs)
    # EpochShuffle: the order of Grain's .shuffle(), without its per-draw cost on small datasets
    ds = EpochShuffle(grain.MapDataset.source(eligible).seed(seed)).repeat(num_epochs).random_map(sampler)
    return ds[shard_index::shard_count]


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app (pytest, argparse
    CLIs) they are unparsed, so take the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_iterator(ds: grain.MapDataset, batch_size: int, *, num_workers: int = 0,
                  worker_buffer_size: int = 2, read_threads: int = 1) -> grain.DatasetIterator:
    """Batches ``ds`` (dropping the remainder) and iterates it, in ``num_workers``
    processes when > 0. Batches are dicts of numpy arrays with a leading
    ``batch_size`` axis. The iterator's state checkpoints with
    ``grain.checkpoint.CheckpointSave``."""
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size))
    it_ds = it_ds.batch(batch_size, drop_remainder=True)
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                               per_worker_buffer_size=worker_buffer_size))
    return iter(it_ds)
