"""Where clips start and end, from per-frame face boxes and frame thumbnails (pass 1's output).

A video becomes clips of consecutive 25 fps frames, each with one fixed crop. The boxes measured
here are the bounding boxes of each frame's 68 landmarks: dlib's HOG boxes snap to a coarse grid
of positions and sizes (on the 256 px example videos they jump between 149 and 180 px from one
frame to the next while the head barely moves), the landmarks do not. Boundaries:

* ``no_face``: no box (gaps of at most ``max_gap`` frames are bridged by interpolating the box);
* ``shot_cut``: the mean absolute difference of consecutive 32x32 grey thumbnails (0..1) above
  ``cut_threshold``;
* ``box_jump``: the box centre moves more than ``jump`` box sizes, or its size changes more than
  ``1 + jump`` times, between consecutive frames;
* ``drift``: the smoothed box leaves its clip's first box by more than ``drift`` box sizes (centre)
  or scales by more than ``1 + drift`` (one fixed crop must keep framing the face);
* ``max_seconds``: long clips are cut into pieces.

Clips shorter than ``min_seconds`` are dropped and counted as ``too_short``. Boxes are smoothed
with a centred moving average of ``smooth`` frames inside each run between hard boundaries.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.schema import FPS

__all__ = ["SegmentConfig", "Clip", "segment", "thumbnail", "cut_score", "landmark_box"]


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    min_seconds: float = 2.0
    max_seconds: float = 30.0
    max_gap: int = 2
    cut_threshold: float = 0.12
    jump: float = 0.25
    drift: float = 0.2
    smooth: int = 9


@dataclasses.dataclass(frozen=True)
class Clip:
    start: int              # first frame (25 fps index)
    stop: int               # one past the last frame
    boxes: np.ndarray       # [stop-start, 4] smoothed landmark boxes (left, top, right, bottom)
    detections: np.ndarray  # [stop-start, 4] the detector's boxes (gaps interpolated)
    landmarks: np.ndarray   # [stop-start, 68, 2] (gaps interpolated)

    @property
    def num_frames(self) -> int:
        return self.stop - self.start


def thumbnail(img: np.ndarray) -> np.ndarray:
    """RGB uint8 [H,W,3] -> 32x32 grey float32 in [0,1] (block means), for shot-cut detection."""
    g = img.astype(np.float32).mean(-1) / 255.0
    h, w = g.shape
    ys = np.linspace(0, h, 33).astype(int)
    xs = np.linspace(0, w, 33).astype(int)
    rows = np.add.reduceat(g, ys[:-1], axis=0) / np.diff(ys)[:, None]
    return (np.add.reduceat(rows, xs[:-1], axis=1) / np.diff(xs)[None, :]).astype(np.float32)


def _size(b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]), 1e-6))


def _centre(b: np.ndarray) -> np.ndarray:
    return np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], -1)


def _fill_gaps(boxes: np.ndarray, valid: np.ndarray, max_gap: int) -> np.ndarray:
    valid = valid.copy()
    idx = np.flatnonzero(valid)
    for a, b in zip(idx[:-1], idx[1:]):
        if 1 < b - a <= max_gap + 1:
            w = (np.arange(a + 1, b) - a) / (b - a)
            boxes[a + 1:b] = boxes[a] * (1 - w[:, None]) + boxes[b] * w[:, None]
            valid[a + 1:b] = True
    return valid


def _smooth(boxes: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(boxes) < 2:
        return boxes
    r = k // 2
    padded = np.concatenate([np.repeat(boxes[:1], r, 0), boxes, np.repeat(boxes[-1:], r, 0)])
    c = np.cumsum(np.concatenate([np.zeros((1, 4)), padded]), 0)
    return (c[k:] - c[:-k]) / k


def landmark_box(lm: np.ndarray) -> np.ndarray:
    """[...,68,2] -> [...,4] the landmarks' bounding box (left, top, right, bottom)."""
    return np.concatenate([lm.min(-2), lm.max(-2)], -1)


def cut_score(prev: np.ndarray | None, thumb: np.ndarray) -> float:
    """The shot-cut score between consecutive thumbnails (0 for the first frame)."""
    return 0.0 if prev is None else float(np.abs(thumb - prev).mean())


def segment(detections: list, landmarks: list, cut_scores, cfg: SegmentConfig = SegmentConfig()
            ) -> tuple[list[Clip], dict[str, int]]:
    """Per-frame detector boxes and landmarks [68,2] (both None where no face was found), and
    ``cut_score`` [T] of each frame against the one before -> (clips, counts of boundaries and
    drops by reason)."""
    t = len(detections)
    counts: dict[str, int] = {}

    def count(reason, n=1):
        counts[reason] = counts.get(reason, 0) + n

    if t == 0:
        return [], counts
    found = np.array([d is not None for d in detections])
    det = np.array([d if d is not None else (0, 0, 0, 0) for d in detections], np.float64)
    lms = np.array([m if m is not None else np.zeros((68, 2)) for m in landmarks], np.float64)
    valid = found.copy()
    for a in (det, lms.reshape(t, -1)):  # the same gaps, bridged in both
        valid = _fill_gaps(a, found, cfg.max_gap)
    arr = landmark_box(lms)
    hard = np.zeros(t, bool)  # hard[i]: a boundary between frame i-1 and i
    scores = np.asarray(cut_scores, np.float32)
    if len(scores) != t:
        raise ValueError(f"{len(scores)} cut scores for {t} frames")
    cuts = scores[1:] > cfg.cut_threshold
    hard[1:] |= cuts
    count("shot_cut", int(cuts.sum()))
    both = valid[1:] & valid[:-1]
    move = np.linalg.norm(np.diff(_centre(arr), axis=0), axis=-1) / _size(arr[:-1])
    scale = _size(arr[1:]) / _size(arr[:-1])
    jumps = both & ((move > cfg.jump) | (scale > 1 + cfg.jump) | (scale < 1 / (1 + cfg.jump))) & ~hard[1:]
    hard[1:] |= jumps
    count("box_jump", int(jumps.sum()))
    count("no_face_frames", int((~valid).sum()))

    min_len, max_len = int(round(cfg.min_seconds * FPS)), max(1, int(round(cfg.max_seconds * FPS)))
    clips: list[Clip] = []
    i = 0
    while i < t:  # runs of valid frames without hard boundaries
        if not valid[i]:
            i += 1
            continue
        j = i + 1
        while j < t and valid[j] and not hard[j]:
            j += 1
        run = _smooth(arr[i:j], cfg.smooth)
        s = 0
        while s < len(run):  # split the run by drift and length
            ref_c, ref_s = _centre(run[s]), _size(run[s])
            e = s + 1
            while e < len(run) and e - s < max_len:
                if (np.linalg.norm(_centre(run[e]) - ref_c) > cfg.drift * ref_s
                        or not 1 / (1 + cfg.drift) <= _size(run[e]) / ref_s <= 1 + cfg.drift):
                    count("drift")
                    break
                e += 1
            else:
                if e - s >= max_len and e < len(run):
                    count("max_seconds")
            if e - s >= min_len:
                a, b = i + s, i + e
                clips.append(Clip(a, b, run[s:e].astype(np.float32), det[a:b].astype(np.float32),
                                  lms[a:b].astype(np.float32)))
            else:
                count("too_short")
            s = e
        i = j
    return clips, counts
