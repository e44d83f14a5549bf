"""A video -> per-frame descriptors at 25 fps (``gohd describe``), with the face pieces that
``gohd-preprocess`` shares.

Shared with the preprocessing (one implementation):
- ``detect_faces``: pass 1, per-frame dlib box and 68 landmarks (and the shot-cut score the
  segmenter reads);
- ``FrameDescriber``: per 256x256 face crop and its landmarks, the controls (blink ratio, brows)
  and the batched estimators (Deep3DFaceRecon exp/pose, L2CS gaze) -> descriptors [T,72].

``describe_video`` reads a reference video: pass 1 finds the face in every frame; the crop is
GoHD's official crop of the median face box, one for the whole video (as the release crops a
driving video); pass 2 decodes again, crops every frame and describes the frames where a face
was found. Frames where it was lost are filled by linear interpolation in time (held at the
ends) and flagged in ``face_found``. The 16 kHz audio track, when there is one, is kept (the
emotion control reads it).

``Description.save(path)`` writes an ``.npz``: ``descriptors`` [T,72] (exp 64 | pose 6 | gaze 2),
``controls`` [T,21] (``data_pipelines.controls.CONTROL_NAMES``), ``face_found`` [T] bool,
``crop_box`` [T,4] int32 (frame pixels), ``landmarks`` [T,68,2] float32 (crop pixels), ``audio``
[N] float32 (16 kHz; empty without an audio track), ``fps`` (25), ``source`` (the video's name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from data_pipelines.controls import controls_from_landmarks
from data_pipelines.video import align
from data_pipelines.video.decode import AudioStream, SkipVideo, frames_25fps, open_video
from data_pipelines.video.faces import FaceModels, crop_and_resize, official_crop_box, shrink, to_crop

log = logging.getLogger(__name__)

__all__ = ["StageTimer", "detect_faces", "FrameDescriber", "Description", "DescriptionError", "describe_video",
           "FPS", "DESCRIPTOR_DIM"]

FPS = 25
DESCRIPTOR_DIM = 72  # exp 64 | pose 6 (3 angles in radians, 3 translations) | gaze 2 (radians)


class StageTimer:
    """Seconds and frames per stage (``with timer("detect", frames=1): ...``)."""

    def __init__(self):
        self.seconds: Counter = Counter()
        self.frames: Counter = Counter()

    @contextlib.contextmanager
    def __call__(self, stage: str, frames: int = 0):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t
            self.frames[stage] += frames

    def merge(self, other: dict) -> None:
        for k, v in other.get("seconds", {}).items():
            self.seconds[k] += v
        for k, v in other.get("frames", {}).items():
            self.frames[k] += v

    def as_dict(self) -> dict:
        return {"seconds": {k: round(float(v), 4) for k, v in self.seconds.items()},
                "frames": dict(self.frames)}


def detect_faces(info, faces: FaceModels, detect_size: int, timer: StageTimer, progress=None):
    """Pass 1: per 25 fps frame, the detector box (frame pixels) and 68 landmarks (float32), None
    without a face, and the shot-cut score (about 1.3 KB per frame in all). ``progress``: called
    once per frame."""
    from data_pipelines.video.segment import cut_score, thumbnail

    boxes, lms, scores, prev = [], [], [], None
    it = frames_25fps(info)
    while True:
        with timer("decode", 1):
            item = next(it, None)
        if item is None:
            break
        _, img = item
        with timer("detect", 1):
            small, scale = shrink(img, detect_size)
            box = faces.detect(small)
            box = None if box is None else tuple(v / scale for v in box)
            thumb = thumbnail(small)
            scores.append(cut_score(prev, thumb))
            prev = thumb
        boxes.append(box)
        with timer("landmarks", 1):
            lms.append(None if box is None else faces.landmarks(img, box).astype(np.float32))
        if progress is not None:
            progress()
    return boxes, lms, np.asarray(scores, np.float32)


class FrameDescriber:
    """Per face crop (RGB uint8 [256,256,3]) and its 68 landmarks (crop pixels): the controls [21]
    and the estimators' inputs, run through the estimators ``estimators.batch_size`` frames at a
    time. ``descriptors()`` -> [T,72] float32 of every frame added."""

    def __init__(self, estimators, timer: StageTimer):
        self.est, self.timer = estimators, timer
        self.controls, self.landmarks, self.exp, self.pose, self.gaze = [], [], [], [], []
        self._d224, self._d448 = [], []

    def __len__(self) -> int:
        return len(self.controls)

    def add(self, face: np.ndarray, lm: np.ndarray) -> None:
        self.landmarks.append(np.asarray(lm, np.float32))
        self.controls.append(controls_from_landmarks(lm))
        with self.timer("estimators", 0):
            self._d224.append(align.deep3d_input(face, lm, self.est.lm3d))
            self._d448.append(align.l2cs_input(face, align.gaze_box(lm)))
        if len(self._d224) >= self.est.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._d224:
            return
        with self.timer("estimators", len(self._d224)):
            exp, pose, gaze = self.est(np.stack(self._d224), np.stack(self._d448))
        self.exp.append(exp), self.pose.append(pose), self.gaze.append(gaze)
        self._d224, self._d448 = [], []

    def truncate(self, t: int) -> None:
        """Keeps the first ``t`` frames."""
        desc = self.descriptors()[:t]
        self.controls, self.landmarks = self.controls[:t], self.landmarks[:t]
        self.exp, self.pose, self.gaze = [desc[:, :64]], [desc[:, 64:70]], [desc[:, 70:]]

    def descriptors(self) -> np.ndarray:
        self.flush()
        if not self.exp:
            return np.zeros((0, DESCRIPTOR_DIM), np.float32)
        return np.concatenate([np.concatenate(self.exp), np.concatenate(self.pose),
                               np.concatenate(self.gaze)], axis=1).astype(np.float32)


class DescriptionError(ValueError):
    """A descriptor file that cannot be used, or a video that cannot be described (one line)."""


@dataclasses.dataclass
class Description:
    """A reference video's per-frame description at 25 fps (see the module docstring)."""
    descriptors: np.ndarray
    controls: np.ndarray
    face_found: np.ndarray
    crop_box: np.ndarray
    landmarks: np.ndarray
    audio: np.ndarray
    source: str = ""
    fps: int = FPS

    def __len__(self) -> int:
        return len(self.descriptors)

    @property
    def exp(self) -> np.ndarray:
        return self.descriptors[:, :64]

    @property
    def pose(self) -> np.ndarray:
        return self.descriptors[:, 64:70]

    @property
    def gaze(self) -> np.ndarray:
        return self.descriptors[:, 70:72]

    @property
    def blink(self) -> np.ndarray:
        """The blink ratio (mean eye aspect ratio) per frame [T]."""
        return self.controls[:, 0]

    def save(self, path: str | Path) -> Path:
        """Writes the ``.npz`` (to ``path + '.partial'``, then renamed)."""
        import os

        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as f:
            np.savez(f, descriptors=self.descriptors.astype(np.float32), controls=self.controls.astype(np.float32),
                     face_found=self.face_found.astype(bool), crop_box=self.crop_box.astype(np.int32),
                     landmarks=self.landmarks.astype(np.float32), audio=self.audio.astype(np.float32),
                     fps=np.int32(self.fps), source=np.array(self.source))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Description:
        """Reads and checks a ``gohd describe`` file; raises DescriptionError (one line)."""
        path = Path(path)
        if not path.is_file():
            raise DescriptionError(f"{path}: no such descriptor file")
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except Exception as e:
            raise DescriptionError(f"{path}: not a descriptor file ({' '.join(str(e).split())[:100]})") from None
        need = ("descriptors", "controls", "face_found")
        if any(k not in d for k in need):
            raise DescriptionError(f"{path}: a descriptor file holds {', '.join(need)} (made by gohd describe); "
                                   f"this one has {sorted(d)}")
        desc, ctrl = np.asarray(d["descriptors"], np.float32), np.asarray(d["controls"], np.float32)
        t = len(desc)
        if desc.ndim != 2 or desc.shape[1] != DESCRIPTOR_DIM or t == 0:
            raise DescriptionError(f"{path}: descriptors must be [T>0,{DESCRIPTOR_DIM}], got {desc.shape}")
        if ctrl.shape != (t, 21) or np.shape(d["face_found"]) != (t,):
            raise DescriptionError(f"{path}: controls [T,21] and face_found [T] must match descriptors' T={t}")
        if not (np.all(np.isfinite(desc)) and np.all(np.isfinite(ctrl))):
            raise DescriptionError(f"{path}: the descriptors or controls hold NaN or inf")
        fps = int(d.get("fps", FPS))
        if fps != FPS:
            raise DescriptionError(f"{path}: descriptors at {fps} fps; gohd reads {FPS} fps files")
        return cls(desc, ctrl, np.asarray(d["face_found"], bool),
                   np.asarray(d.get("crop_box", np.zeros((t, 4))), np.int32),
                   np.asarray(d.get("landmarks", np.zeros((t, 68, 2))), np.float32),
                   np.asarray(d.get("audio", np.zeros(0)), np.float32), str(d.get("source", path.name)), fps)


def fill_gaps(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """[T,...] values known where ``found`` -> every frame, by linear interpolation in time (held
    at the ends)."""
    values = np.asarray(values, np.float32)
    idx = np.flatnonzero(found)
    if len(idx) == len(found):
        return values
    flat = values.reshape(len(values), -1)
    t = np.arange(len(found))
    out = np.stack([np.interp(t, idx, flat[idx, j]) for j in range(flat.shape[1])], 1)
    return out.reshape(values.shape).astype(np.float32)


def describe_video(path: str | Path, faces: FaceModels, estimators, *, detect_size: int = 640,
                   progress: bool = False, timer: StageTimer | None = None) -> Description:
    """A video -> its ``Description`` (see the module docstring). Raises DescriptionError for a
    video that cannot be read or shows no face. ``progress``: tqdm bars on stderr."""
    from tqdm import tqdm

    timer = timer or StageTimer()
    try:
        info = open_video(path, require_audio=False)
    except SkipVideo as e:
        raise DescriptionError(f"{path}: cannot describe this video ({e})") from None
    total = int(round(info.duration_s * FPS)) or None
    name = Path(path).name
    with tqdm(total=total, unit="frame", desc=f"{name}: faces", disable=not progress, dynamic_ncols=True) as bar:
        boxes, lms, _ = detect_faces(info, faces, detect_size, timer, progress=lambda: bar.update(1))
    found = np.array([b is not None for b in boxes], bool)
    if not len(found):
        raise DescriptionError(f"{path}: no decodable frames")
    if not found.any():
        raise DescriptionError(f"{path}: no face found in any of its {len(found)} frames")
    crop = official_crop_box(np.median(np.array([b for b in boxes if b is not None]), axis=0),
                             info.height, info.width)
    describer = FrameDescriber(estimators, timer)
    with tqdm(total=len(found), unit="frame", desc=f"{name}: descriptors", disable=not progress,
              dynamic_ncols=True) as bar:
        for k, img in frames_25fps(info):
            if k >= len(found):
                break
            if found[k]:
                with timer("crop", 1):
                    face = crop_and_resize(img, crop)
                describer.add(face, to_crop(lms[k], crop))
            bar.update(1)
    desc = describer.descriptors()
    if len(desc) != int(found.sum()):
        raise DescriptionError(f"{path}: the second decode gave {len(desc)} face frames, the first "
                               f"{int(found.sum())}")
    t = len(found)

    def spread(rows: np.ndarray) -> np.ndarray:
        full = np.zeros((t,) + rows.shape[1:], np.float32)
        full[found] = rows
        return fill_gaps(full, found)

    lost = int(t - found.sum())
    if lost:
        log.warning("%s: the face was lost in %d of %d frames (%.0f%%); they are filled by interpolation",
                    name, lost, t, 100.0 * lost / t)
    audio = np.zeros(0, np.float32)
    if info.has_audio:
        with AudioStream(info) as stream:
            audio = stream.read(0, t * 640)
            end = stream.exhausted_at
        if end is not None:
            audio = audio[:end]
    return Description(spread(desc), spread(np.stack(describer.controls)), found,
                       np.tile(np.asarray(crop, np.int32), (t, 1)), spread(np.stack(describer.landmarks)),
                       audio.astype(np.float32), name)
