"""The estimators' input crops, computed from a 256x256 face crop and its 68 landmarks.

* Deep3DFaceRecon (``align_img`` of its ``util/preprocess.py``, re-derived): 5 points from the 68
  (eye centres = means of 37,40 and 43,46 (1-based), nose tip 31, mouth corners 49 and 55), with
  y flipped (``y' = H − 1 − y``); a least-squares fit of the 3D template's 5 points (``lm3d``,
  from Deep3DFaceRecon's ``BFM/similarity_Lm3D_all.mat``) to them, orthographic, giving a
  translation t and a scale s; the image resized by ``102 / s`` (PIL bicubic, sizes truncated to
  integers) and the 224x224 window centred on t cut out. -> RGB [224,224,3] in [0, 1].
* L2CS-Net (``get_gaze_params``): the face box cut out (integer bounds), resized to 224x224 and
  then to 448x448, bilinear (the release uses cv2 for the first resize; PIL's bilinear, used here,
  antialiases when it shrinks), then ImageNet-normalised on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["five_points", "load_lm3d", "deep3d_input", "l2cs_input", "gaze_box", "RESCALE", "DEEP3D_SIZE",
           "L2CS_SIZE"]

DEEP3D_SIZE = 224
L2CS_SIZE = 448
RESCALE = 102.0
_IDX = np.array([31, 37, 40, 43, 46, 49, 55]) - 1


def five_points(lm68: np.ndarray) -> np.ndarray:
    """[68,k] -> [5,k]: left eye centre, right eye centre, nose tip, left and right mouth corner."""
    lm = np.asarray(lm68, np.float64)
    return np.stack([lm[_IDX[[1, 2]]].mean(0), lm[_IDX[[3, 4]]].mean(0), lm[_IDX[0]], lm[_IDX[5]],
                     lm[_IDX[6]]])


def load_lm3d(path: str | Path) -> np.ndarray:
    """Deep3DFaceRecon's ``similarity_Lm3D_all.mat`` (its 68 3D template points under ``lm``) ->
    the 5-point template [5,3]. A [5,3] or [68,3] ``.npy`` works too."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (Deep3DFaceRecon_pytorch/BFM/similarity_Lm3D_all.mat)")
    if p.suffix == ".npy":
        lm = np.load(p)
    else:
        from scipy.io import loadmat

        try:
            lm = loadmat(str(p))["lm"]
        except Exception as e:
            raise ValueError(f"{p}: not Deep3DFaceRecon's similarity_Lm3D_all.mat ({e})") from None
    lm = np.asarray(lm, np.float64)
    if lm.shape == (68, 3):
        return five_points(lm)
    if lm.shape == (5, 3):
        return lm
    raise ValueError(f"{p}: the 3D landmark template must be [68,3] or [5,3], got {lm.shape}")


def _pos(xp: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Orthographic fit of 3D points x [5,3] to 2D points xp [5,2]: (translation [2], scale)."""
    n = len(xp)
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3], a[0::2, 3] = x, 1.0
    a[1::2, 4:7], a[1::2, 7] = x, 1.0
    k = np.linalg.lstsq(a, xp.reshape(-1), rcond=None)[0]
    s = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2.0
    return np.array([k[3], k[7]]), float(s)


def deep3d_input(img: np.ndarray, lm68: np.ndarray, lm3d: np.ndarray) -> np.ndarray:
    """RGB uint8 [H,W,3] + its 68 landmarks (x right, y down) -> aligned float32 [224,224,3] in [0,1]."""
    h0, w0 = img.shape[:2]
    lm5 = five_points(lm68)
    lm5[:, 1] = h0 - 1 - lm5[:, 1]
    t, s = _pos(lm5, lm3d)
    s = RESCALE / s
    w, h = int(w0 * s), int(h0 * s)
    left = int(w / 2 - DEEP3D_SIZE / 2 + (t[0] - w0 / 2) * s)
    up = int(h / 2 - DEEP3D_SIZE / 2 + (h0 / 2 - t[1]) * s)
    out = Image.fromarray(img).resize((w, h), resample=Image.BICUBIC)
    out = out.crop((left, up, left + DEEP3D_SIZE, up + DEEP3D_SIZE))
    return np.asarray(out, np.float32) / 255.0


def gaze_box(lm68: np.ndarray) -> np.ndarray:
    """The face box L2CS sees: the landmarks' bounding box made square, 10% margin (the release
    uses RetinaFace's box, which frames about the same region)."""
    (l, t), (r, b) = lm68.min(0), lm68.max(0)
    cx, cy, half = (l + r) / 2, (t + b) / 2, 0.55 * max(r - l, b - t)
    return np.array([cx - half, cy - half, cx + half, cy + half])


def l2cs_input(img: np.ndarray, box) -> np.ndarray:
    """RGB uint8 [H,W,3] + a face box -> the face at 448x448, RGB uint8 (normalised later)."""
    h, w = img.shape[:2]
    l, t, r, b = (int(v) for v in box)
    l, t, r, b = max(l, 0), max(t, 0), min(r, w), min(b, h)
    if r - l < 2 or b - t < 2:
        raise ValueError(f"face box {box} is empty inside a {w}x{h} image")
    face = Image.fromarray(np.ascontiguousarray(img[t:b, l:r])).resize((224, 224), Image.BILINEAR)
    return np.asarray(face.resize((L2CS_SIZE, L2CS_SIZE), Image.BILINEAR))
