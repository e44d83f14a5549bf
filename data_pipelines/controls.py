"""The 21 per-frame controls of the clip record, from 68 iBUG landmarks.

One definition for every source: the synthetic renderer's exact landmarks and the dlib landmarks
of real video (``gohd-preprocess``) go through the same function.
"""

from __future__ import annotations

import numpy as np

__all__ = ["controls_from_landmarks", "CONTROL_NAMES"]

CONTROL_NAMES = ("blink_ratio",) + tuple(f"brow{i}_{a}" for i in range(17, 27) for a in "xy")


def controls_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Controls float32 [...,21] from 68 iBUG landmarks [...,68,2] in image coordinates (x right, y down).

    controls[0] = blink ratio = mean eye aspect ratio of both eyes,
        EAR = (|p1 - p5| + |p2 - p4|) / (2 |p0 - p3|) over each eye's 6 points (36-41, 42-47).
    controls[1:21] = brow features: the 10 brow points 17..26, each as (x, y) interleaved
        [x17, y17, x18, y18, ..., x26, y26], in the face frame: origin at the midpoint of the two eye
        centres, where an eye centre is the midpoint of its corners ((36+39)/2 and (42+45)/2); x axis
        along the line from the image-left eye centre to the image-right eye centre; y axis
        perpendicular, pointing up in the image (towards the forehead for an upright face); unit =
        the distance between the eye centres (inter-ocular distance).
    Invariant to image translation, scale and in-plane rotation; works for any detector that gives
    the 68-point iBUG layout.
    """
    lm = np.asarray(landmarks, np.float64)
    if lm.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape [...,68,2], got {lm.shape}")
    p = lm * np.array([1.0, -1.0])  # y up

    def ear(e):
        n = np.linalg.norm
        return (n(e[..., 1, :] - e[..., 5, :], axis=-1) + n(e[..., 2, :] - e[..., 4, :], axis=-1)) / (
            2.0 * np.maximum(n(e[..., 0, :] - e[..., 3, :], axis=-1), 1e-9))

    left, right = p[..., 36:42, :], p[..., 42:48, :]
    blink = 0.5 * (ear(left) + ear(right))
    c_left = 0.5 * (left[..., 0, :] + left[..., 3, :])
    c_right = 0.5 * (right[..., 0, :] + right[..., 3, :])
    mid = 0.5 * (c_left + c_right)
    axis = c_right - c_left
    iod = np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-9)
    ex = axis / iod
    ey = np.stack([-ex[..., 1], ex[..., 0]], -1)
    rel = p[..., 17:27, :] - mid[..., None, :]
    bx = np.einsum("...ki,...i->...k", rel, ex) / iod
    by = np.einsum("...ki,...i->...k", rel, ey) / iod
    brow = np.stack([bx, by], -1).reshape(*lm.shape[:-2], 20)
    return np.concatenate([blink[..., None], brow], -1).astype(np.float32)
