"""Reading a clip for ``gohd-eval``: frames at 25 fps, 16 kHz audio, one face track, the crops.

``read_clip(path)`` decodes a video (PyAV, ``data_pipelines.video.decode``) into RGB uint8 frames
[T,H,W,3] at 25 fps and its audio track as float32 at 16 kHz, at most T*640 samples (fewer when
the track ends first; an empty array without an audio track). A clip is held whole: 10 s at 512 px is about 200 MB.

``track_face(frames, faces)`` finds the face once per clip: dlib's detector on every
``detect_every``-th frame (boxes in between interpolated in time, held at the ends), then the 68
landmarks on every frame from its box. ``NoFace`` when no detection succeeds.

Crops:

* ``syncnet_crops``: what syncnet_python's ``run_pipeline.py`` (``crop_video``) feeds SyncNet:
  per frame the box's half size ``s = max(w, h) / 2`` and centre, each median-filtered over 13
  frames (``scipy.signal.medfilt``), the frame padded by ``int(s * 1.8)`` with the value 110, the
  window rows ``[cy - s, cy + 1.8 s)`` and columns ``[cx - 1.4 s, cx + 1.4 s)`` (crop scale 0.4),
  resized to 224x224 by bilinear interpolation with half-pixel centres (OpenCV's INTER_LINEAR).
  What differs: syncnet_python's boxes come from S3FD, ours from dlib's HOG detector, whose boxes
  are tighter (about the eyebrows to the chin) and sit lower; and we do not cut the video into face
  tracks (a clip with a face lost for a while keeps interpolated boxes). LSE numbers are therefore
  close to, not equal to, a paper's on the same video.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = ["EvalClip", "NoFace", "read_clip", "FaceTrack", "track_face", "syncnet_crops", "resize_bilinear",
           "SAMPLES_PER_FRAME"]

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


class NoFace(ValueError):
    """No face was found in the clip's frames."""


@dataclasses.dataclass
class EvalClip:
    """One decoded clip: ``frames`` RGB uint8 [T,H,W,3] at 25 fps, ``audio`` float32 [<= T*640] at
    16 kHz (empty without an audio track)."""

    path: str
    frames: np.ndarray
    audio: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.frames) / 25.0


def read_clip(path: str | Path, *, max_frames: int | None = None) -> EvalClip:
    """Decodes ``path``; raises ``data_pipelines.video.decode.SkipVideo`` (with a reason) for a file
    that is missing, not a video, corrupt or without frames."""
    from data_pipelines.video.decode import AudioStream, SkipVideo, frames_25fps, open_video

    info = open_video(path, require_audio=False)
    frames = []
    for k, img in frames_25fps(info):
        if max_frames is not None and k >= max_frames:
            break
        frames.append(img)
    if not frames:
        raise SkipVideo("corrupt", "no decodable video frame")
    audio = np.zeros(0, np.float32)
    if info.has_audio:
        with AudioStream(info) as stream:
            audio = stream.read(0, len(frames) * SAMPLES_PER_FRAME)
            end = stream.exhausted_at
        if end is not None:  # an audio track shorter than the video: not zero-padded
            audio = audio[:end]
    return EvalClip(str(path), np.stack(frames), audio)


@dataclasses.dataclass
class FaceTrack:
    """``boxes`` [T,4] (left, top, right, bottom; frame pixels), ``landmarks`` [T,68,2] (frame
    pixels), ``detected`` [T] bool (a detection on that frame; the others are interpolated)."""

    boxes: np.ndarray
    landmarks: np.ndarray
    detected: np.ndarray


def _interpolate(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    t = np.arange(len(values))
    return np.stack([np.interp(t, t[known], values[known, j]) for j in range(values.shape[1])], axis=1)


MIN_DETECT_SIDE = 256  # smaller frames are enlarged for dlib (its HOG finds faces of ~80 px and up)


def _for_detection(frame: np.ndarray, detect_size: int) -> tuple[np.ndarray, float]:
    """The frame at the size the detector sees (at most ``detect_size``, at least 256 px on its
    longer side) and that size over the frame's."""
    from PIL import Image

    from data_pipelines.video.faces import shrink

    h, w = frame.shape[:2]
    if max(h, w) >= MIN_DETECT_SIDE:
        return shrink(frame, detect_size)
    scale = MIN_DETECT_SIDE / max(h, w)
    size = (round(w * scale), round(h * scale))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR)), scale


def track_face(frames: np.ndarray, faces, *, detect_every: int = 5, detect_size: int = 640) -> FaceTrack:
    """The face of every frame of ``frames`` [T,H,W,3] (``faces``: ``data_pipelines.video.faces
    .FaceModels``). Frames under 256 px (e.g. a 64 px ``gohd animate`` output) are enlarged
    (bilinear) for the detector and the landmarks; boxes and points are in the frame's pixels."""
    t = len(frames)
    boxes = np.zeros((t, 4))
    detected = np.zeros(t, bool)
    every = max(1, detect_every)
    for i in list(range(0, t, every)) + [None] + [i for i in range(t) if i % every]:
        if i is None:  # the sampled frames found nothing: try the others, up to the first face
            if detected.any():
                break
            continue
        small, scale = _for_detection(frames[i], detect_size)
        box = faces.detect(small)
        if box is not None:
            boxes[i], detected[i] = np.asarray(box) / scale, True
            if not i % every == 0:
                break
    if not detected.any():
        raise NoFace(f"no face found in {t} frames")
    boxes = _interpolate(boxes, detected)
    landmarks = np.empty((t, 68, 2), np.float32)
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        if max(frame.shape[:2]) >= MIN_DETECT_SIDE:
            landmarks[i] = faces.landmarks(frame, box)
        else:
            big, scale = _for_detection(frame, detect_size)
            landmarks[i] = faces.landmarks(big, box * scale) / scale
    return FaceTrack(boxes, landmarks, detected)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (torch's ``interpolate(mode=
    "bilinear", align_corners=False)``, OpenCV's INTER_LINEAR up to its fixed-point rounding), the
    width first, then the height (``models.inception_fid.bilinear_taps``), uint8 or float [H,W,C]
    -> same dtype."""
    from gohd_jax.models.inception_fid import bilinear_taps

    x = img.astype(np.float32)
    i0, i1, w0, w1 = bilinear_taps(img.shape[1], width)
    x = x[:, i0] * w0[None, :, None] + x[:, i1] * w1[None, :, None]
    i0, i1, w0, w1 = bilinear_taps(img.shape[0], height)
    x = x[i0] * w0[:, None, None] + x[i1] * w1[:, None, None]
    if img.dtype == np.uint8:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x.astype(img.dtype)


def syncnet_crops(frames: np.ndarray, boxes: np.ndarray, *, crop_scale: float = 0.4, size: int = 224) -> np.ndarray:
    """syncnet_python's face crops (module docstring) of ``frames`` [T,H,W,3] for ``boxes`` [T,4]
    -> uint8 [T,size,size,3], same channel order as the frames."""
    from scipy.signal import medfilt

    boxes = np.asarray(boxes, np.float64)
    half = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cy, cx = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    if len(boxes) > 1:  # medfilt's kernel may not exceed the signal's length; odd sizes only
        k = min(13, len(boxes) if len(boxes) % 2 else len(boxes) - 1)
        half, cy, cx = (medfilt(v, kernel_size=k) for v in (half, cy, cx))
    out = np.empty((len(frames), size, size, frames.shape[-1]), np.uint8)
    for i, frame in enumerate(frames):
        s = half[i]
        pad = int(s * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        my, mx = cy[i] + pad, cx[i] + pad
        face = padded[int(my - s):int(my + s * (1 + 2 * crop_scale)),
                      int(mx - s * (1 + crop_scale)):int(mx + s * (1 + crop_scale))]
        if face.size == 0:
            raise NoFace(f"frame {i}: the face box {boxes[i].round(1).tolist()} gives an empty crop")
        out[i] = resize_bilinear(face, size, size)
    return out
