"""The source portrait: reading it, GoHD's crop, and its descriptors (exp0, pose0, gaze0, control0).

``load_image`` accepts any image PIL reads; grayscale, palette and CMYK images are converted to
RGB, RGBA is composited on white; unreadable, empty or tiny (< 64 px) images raise ``InputError``
with one line saying why. ``prepare_source`` finds the face (dlib HOG, as the release's
``crop_src_image``), cuts the official crop (box up 10%, 40% margin) at 256x256, and returns it
with how it was found; an image without a visible face is centre-cropped with a warning (the
render still runs). ``source_descriptors`` measures exp0/pose0/gaze0 with the ported estimators
when their weights are given, else reads a ``.npy`` ([72] or [T,72]: its first row), else uses
the neutral descriptor (zeros: frontal, mouth closed, eyes forward), saying which.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["InputError", "load_image", "Source", "prepare_source", "source_descriptors", "MIN_SIDE",
           "neutral_controls"]

MIN_SIDE = 64
ESTIMATOR_CROP = 256


class InputError(ValueError):
    """A user input that cannot be used; the message is one line that says why."""


def load_image(path: str | Path) -> np.ndarray:
    """-> RGB uint8 [H,W,3]."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such image file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the image file is empty (0 bytes)")
    try:
        with Image.open(p) as img:
            img.load()
            mode = img.mode
            if mode in ("RGBA", "LA") or (mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                out = Image.alpha_composite(bg, rgba).convert("RGB")
                log.warning("%s: %s image: transparent pixels composited on white", p, mode)
            else:
                out = img.convert("RGB")
                if mode != "RGB":
                    log.info("%s: %s image converted to RGB", p, mode)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{p}: cannot read the image ({' '.join(str(e).split())[:120]})") from None
    arr = np.asarray(out)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{p}: the image is {w}x{h} pixels; it needs at least {MIN_SIDE} on each side")
    return arr


@dataclasses.dataclass
class Source:
    crop: np.ndarray            # RGB uint8 [256,256,3], the official crop
    face_found: bool
    box: tuple | None           # the face box in the original image
    landmarks: np.ndarray | None  # [68,2] in crop pixels, when a face was found


def prepare_source(img: np.ndarray, faces=None, *, where: str = "image") -> Source:
    """The official 256x256 crop of ``img``; ``faces`` a ``FaceModels`` (None: no detector, centre crop)."""
    from data_pipelines.video.faces import crop_and_resize, official_crop_box, shrink, to_crop

    h, w = img.shape[:2]
    box = None
    if faces is not None:
        small, scale = shrink(img, 640)
        found = faces.detect(small)
        box = None if found is None else tuple(v / scale for v in found)
    if box is None:
        side = min(h, w)
        crop = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        log.warning("%s: no face found%s; rendering a centre crop anyway (results will be poor)", where,
                    "" if faces is not None else " (no face detector installed)")
        return Source(crop_and_resize(img, crop, ESTIMATOR_CROP), False, None, None)
    crop = official_crop_box(box, h, w)
    out = crop_and_resize(img, crop, ESTIMATOR_CROP)
    return Source(out, True, box, to_crop(faces.landmarks(img, box), crop, ESTIMATOR_CROP))


def neutral_controls() -> np.ndarray:
    """control0 [21] of a neutral face with open eyes (the synthetic renderer's default identity)."""
    from data_pipelines.synthetic.identity import make_identity
    from data_pipelines.synthetic.render import controls_from_descriptor, neutral_descriptor

    return controls_from_descriptor(make_identity(0, 0), neutral_descriptor())


def source_descriptors(source: Source, *, estimators=None, npy: str | Path | None = None
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(descriptor0 [72] = exp0 64 | pose0 6 | gaze0 2, control0 [21], how they were obtained)."""
    from data_pipelines.controls import controls_from_landmarks
    from data_pipelines.video import align

    control0 = (controls_from_landmarks(source.landmarks) if source.landmarks is not None
                else neutral_controls())
    if estimators is not None:
        if source.landmarks is None:
            raise InputError("the estimators need a visible face to measure exp0/pose0/gaze0; give "
                             "--source-descriptors FILE.npy or drop --deep3d/--l2cs for neutral ones")
        lm = source.landmarks
        exp, pose, gaze = estimators(align.deep3d_input(source.crop, lm, estimators.lm3d)[None],
                                     align.l2cs_input(source.crop, align.gaze_box(lm))[None])
        return np.concatenate([exp[0], pose[0], gaze[0]]).astype(np.float32), control0, "estimators"
    if npy is not None:
        p = Path(npy)
        try:
            d = np.load(p, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{p}: cannot read the source descriptors ({' '.join(str(e).split())[:100]})") from None
        d = np.asarray(d, np.float32).reshape(-1, d.shape[-1]) if d.ndim else d
        if d.ndim != 2 or d.shape[1] != 72:
            raise InputError(f"{p}: source descriptors must be [72] or [T,72] (exp 64, pose 6, gaze 2), "
                             f"got shape {np.shape(d)}")
        return d[0].copy(), control0, f"file {p.name}"
    return np.zeros(72, np.float32), control0, "neutral (no estimator weights or descriptor file given)"
