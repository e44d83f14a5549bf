"""Does a rendered video's mouth move when the true mouth moves?

The score ``make demo`` reports for its held-out synthetic video (issue: the videos must show the
controls at work). Definitions (pinned):

* **Mouth box** (``mouth_box``): the smallest pixel box holding the 20 mouth landmarks (iBUG
  48-67, pixel (col, row) coordinates) of every frame given, grown by ``margin`` pixels and
  clipped to the frame. From the ground truth's landmarks over the whole clip, so that the box
  covers where the mouth goes as the head moves.
* **Mouth change** (``mouth_change``): per frame t >= 1, the mean absolute difference of the
  frame's pixels in the box from the previous frame's, on the 0-255 scale, over RGB.
* **Opening change**: |o_t - o_(t-1)| of the true mouth opening o (the synthetic descriptor's jaw
  opening, dim 0).
* **Mouth-motion correlation** (``mouth_motion_correlation``): the Pearson correlation of the two
  [T-1] series. 1: the rendered mouth changes exactly when and as much as the true one; 0 for a
  still video (a constant series has no correlation; reported as 0, not NaN).

Head motion also changes the pixels in the box, so even the ground-truth video scores below 1.
"""

from __future__ import annotations

import numpy as np

MOUTH = slice(48, 68)


def mouth_box(landmarks_px: np.ndarray, size: int, margin: int = 2) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), half-open, from landmarks [...,68,2] in pixel (col, row) coordinates."""
    pts = np.asarray(landmarks_px, np.float64)[..., MOUTH, :].reshape(-1, 2)
    c0, r0 = np.floor(pts.min(0)).astype(int) - margin
    c1, r1 = np.ceil(pts.max(0)).astype(int) + margin + 1
    return max(r0, 0), min(r1, size), max(c0, 0), min(c1, size)


def mouth_change(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """[T-1] mean |frame_t - frame_(t-1)| inside ``box`` (0-255 scale) from frames [T,H,W,3] uint8."""
    r0, r1, c0, c1 = box
    crop = np.asarray(frames, np.float64)[:, r0:r1, c0:c1]
    return np.abs(np.diff(crop, axis=0)).mean(axis=(1, 2, 3))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D series; 0 when either is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def mouth_motion_correlation(frames: np.ndarray, opening: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Pearson correlation of ``mouth_change(frames, box)`` with |diff(opening)| (see the module doc).

    Args:
      frames: uint8 [T,H,W,3], the rendered video.
      opening: [T] the true mouth opening per frame (any unit).
      box: ``mouth_box`` of the true landmarks.
    """
    opening = np.asarray(opening, np.float64)
    if len(frames) != len(opening):
        raise ValueError(f"{len(frames)} frames but {len(opening)} mouth openings")
    return pearson(mouth_change(frames, box), np.abs(np.diff(opening)))
