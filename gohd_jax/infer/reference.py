"""Controls from reference videos: ``--pose/--exp/--gaze/--blink VIDEO|desc.npz`` and ``--drive``.

A reference is a video (described on the fly with ``data_pipelines.video.describe``: the face
models and the estimators ``gohd-preprocess`` uses) or a ``gohd describe`` file (``.npz``). Its
tracks are fitted to the clip's length: trimmed when longer; played forward then backward
(ping-pong) when shorter, so that motion never jumps (the log says so). Both are at 25 fps: a
video at another rate is resampled by timestamp when it is described.

What each control takes from a reference of T frames, for a clip of n frames:
- pose: ``relative`` (default, as the release's relative mode): pose0 + (p_t - p_0), the reference's
  motion from its first frame on top of the source's pose; ``absolute``: p_t;
- expression: the reference's expression [n,64], absolute (the lips follow the video);
- gaze: the reference's gaze [n,2], absolute (radians);
- blink: the reference's blink ratio r_t (eye aspect ratio) scaled to the source's open eyes,
  control0_blink x r_t / r_open, with r_open the reference's 90th percentile (an open eye), so a
  closed eye is 0 whatever the two faces' eye shapes; it replaces the generated eye control.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from data_pipelines.video.decode import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

__all__ = ["Reference", "ReferenceError", "References", "LockedFaces", "is_reference", "fit_length", "pose_track",
           "blink_track", "POSE_MODES"]

POSE_MODES = ("relative", "absolute")


class ReferenceError(ValueError):
    """A reference that cannot be used (one line that says why)."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """A control taken from a reference (``path``: a video or a ``gohd describe`` .npz)."""
    path: str

    @property
    def is_video(self) -> bool:
        return Path(self.path).suffix.lower() in VIDEO_EXTENSIONS


def is_reference(value: str) -> bool:
    """Whether a control's value names a reference (a video or a descriptor .npz)."""
    return Path(str(value)).suffix.lower() in VIDEO_EXTENSIONS + (".npz",)


def fit_length(track: np.ndarray, n: int, what: str = "the reference") -> np.ndarray:
    """[T,...] -> [n,...]: the first n frames, or forward-backward repeats when T < n."""
    track = np.asarray(track)
    t = len(track)
    if t == 0:
        raise ReferenceError(f"{what} has no frames")
    if t >= n:
        return track[:n]
    if t == 1:
        idx = np.zeros(n, int)
    else:
        k = np.arange(n) % (2 * (t - 1))
        idx = np.where(k < t, k, 2 * (t - 1) - k)
    log.warning("%s has %d frames for %d: played forward and backward (ping-pong)", what, t, n)
    return track[idx]


def pose_track(pose: np.ndarray, pose0: np.ndarray, mode: str) -> np.ndarray:
    """A reference's pose [n,6] -> the clip's absolute pose [n,6] (see the module docstring)."""
    if mode not in POSE_MODES:
        raise ReferenceError(f"pose mode {mode!r}: use {' or '.join(POSE_MODES)}")
    pose = np.asarray(pose, np.float32)
    if mode == "absolute":
        return pose
    return (np.asarray(pose0, np.float32)[None] + (pose - pose[:1])).astype(np.float32)


def blink_track(ratio: np.ndarray, control0_blink: float) -> np.ndarray:
    """A reference's blink ratio [n] -> the source's eye control [n] (see the module docstring)."""
    ratio = np.asarray(ratio, np.float32)
    r_open = float(np.percentile(ratio, 90))
    if r_open <= 1e-6:
        raise ReferenceError("the reference's eyes are never open (blink ratio ~0): cannot scale its blinks")
    return (np.float32(control0_blink) * ratio / np.float32(r_open)).astype(np.float32)


class LockedFaces:
    """Face models used under a lock (dlib's objects are not documented as thread-safe): host
    workers describing a reference share them with the source crops."""

    def __init__(self, faces, lock: threading.Lock):
        self._faces, self._lock = faces, lock

    def detect(self, img):
        with self._lock:
            return self._faces.detect(img)

    def landmarks(self, img, box):
        with self._lock:
            return self._faces.landmarks(img, box)


class References:
    """Loads references once: ``.npz`` files are read, videos described (needs the face models and
    the estimators); the last ``capacity`` are kept, keyed by path (thread-safe: one description
    per path even when several rows ask at once)."""

    def __init__(self, faces=None, estimators=None, *, capacity: int = 16, progress: bool = False):
        self.faces, self.estimators, self.capacity, self.progress = faces, estimators, int(capacity), progress
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def check_video_support(self, what: str) -> None:
        if self.estimators is None:
            raise ReferenceError(f"{what}: describing a video needs the estimator weights: give --deep3d, "
                                 "--lm3d and --l2cs (as for gohd-preprocess), or a gohd describe .npz file")
        if self.faces is None:
            raise ReferenceError(f"{what}: describing a video needs dlib and its landmark model: "
                                 "pip install 'gohd-jax[preprocess]'")

    def get(self, ref: Reference):
        """The reference's ``Description`` (``data_pipelines.video.describe``)."""
        key = str(Path(ref.path).resolve())
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            desc = self._load(ref)
            with self._lock:
                self._cache[key] = desc
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
                self._loading.pop(key, None)
        return desc

    def _load(self, ref: Reference):
        from data_pipelines.video.describe import Description, DescriptionError, describe_video

        if not Path(ref.path).is_file():
            raise ReferenceError(f"{ref.path}: no such reference file")
        try:
            if not ref.is_video:
                return Description.load(ref.path)
            self.check_video_support(ref.path)
            desc = describe_video(ref.path, self.faces, self.estimators.with_batch_size(16), progress=self.progress)
        except DescriptionError as e:
            raise ReferenceError(str(e)) from None
        lost = int((~desc.face_found).sum())
        log.info("described %s: %d frames (%.2f s)%s", ref.path, len(desc), len(desc) / 25,
                 f", face lost in {lost} (interpolated)" if lost else "")
        return desc
