"""Streaming video and audio decoding with PyAV, at the dataset's rates (25 fps, 16 kHz mono).

``open_video(path)`` probes a file and raises ``SkipVideo`` (with a short reason that the report
counts) for what cannot become clips: not a media file, corrupt, no video stream, no audio stream.
``frames_25fps(path)`` yields (index, RGB uint8 [H,W,3]) at 25 fps whatever the source rate:
output frame k is the source frame whose timestamp is nearest to k/25 s (ties to the later one),
so variable frame rate and 30/50/60 fps sources resample the same way; the display rotation (the
container's display matrix) is applied. ``AudioStream`` gives 16 kHz mono float32 samples by
position, decoding forward only as far as asked and dropping what lies before the last request, so
memory stays constant on long files. Sample 0 is at the first video frame's timestamp (audio that
starts late is zero-padded, audio before it dropped).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from data_pipelines.schema import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)

__all__ = ["SkipVideo", "VideoInfo", "open_video", "frames_25fps", "AudioStream", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv")


class SkipVideo(Exception):
    """A video that yields no clips; ``reason`` is a short key the report counts by."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int              # after rotation
    height: int
    rotation: int           # degrees counter-clockwise, as the display matrix says
    fps: float              # the stream's average rate (informative only: decoding goes by time)
    duration_s: float       # container duration (or the stream's), 0 when unknown
    variable_frame_rate: bool
    start_time_s: float     # first video frame's presentation time
    has_audio: bool = True


def _err(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def open_video(path: str | Path, *, require_audio: bool = True) -> VideoInfo:
    """Probes ``path`` (decoding its first video frame); raises SkipVideo for unusable files (and
    for a file without an audio track unless ``require_audio`` is False)."""
    import av

    path = str(path)
    if not Path(path).is_file():
        raise SkipVideo("missing", path)
    try:
        container = av.open(path)
    except Exception as e:  # PyAV raises InvalidDataError and friends
        raise SkipVideo("not_a_video", _err(e)) from None
    with container:
        if not container.streams.video:
            raise SkipVideo("no_video_stream")
        has_audio = bool(container.streams.audio)
        if require_audio and not has_audio:
            raise SkipVideo("no_audio", "the file has no audio track")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream))
        except StopIteration:
            raise SkipVideo("corrupt", "no decodable video frame") from None
        except Exception as e:
            raise SkipVideo("corrupt", _err(e)) from None
        rot = int(round(getattr(first, "rotation", 0) or 0)) % 360
        w, h = first.width, first.height
        if rot in (90, 270):
            w, h = h, w
        rate = stream.average_rate or stream.guessed_rate or Fraction(FPS)
        dur = 0.0
        if container.duration:
            dur = container.duration / 1e6
        elif stream.duration and stream.time_base:
            dur = float(stream.duration * stream.time_base)
        # A stream whose average rate differs from its base rate has varying frame durations.
        vfr = bool(stream.base_rate and stream.average_rate
                   and abs(float(stream.base_rate) - float(stream.average_rate)) > 0.01 * float(stream.average_rate))
        start = float(first.time) if first.time is not None else 0.0
    return VideoInfo(path, int(w), int(h), rot, float(rate), dur, vfr, start, has_audio)


def _rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    # The display matrix's angle is counter-clockwise; np.rot90 turns counter-clockwise too.
    return np.ascontiguousarray(np.rot90(img, k=(rotation // 90) % 4)) if rotation % 360 else img


def frames_25fps(info: VideoInfo, fps: int = FPS) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (k, RGB uint8 [H,W,3]) for k = 0, 1, … at ``fps``, streaming (one decoded frame held).

    Stops at the last source frame's end (its timestamp + one average frame duration). A decode
    error midway ends the stream early, logged (the frames before it are kept).
    """
    import av

    step = 1.0 / fps
    with av.open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        k, prev, prev_t, last_dur = 0, None, None, 1.0 / max(info.fps, 1.0)
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                t = float(frame.time) - info.start_time_s
                if prev is not None:
                    last_dur = max(t - prev_t, 1e-6)
                    # the previous frame is the nearest for every output time before the midpoint
                    while k * step < 0.5 * (prev_t + t):
                        yield k, prev
                        k += 1
                prev = _rotate(frame.to_ndarray(format="rgb24"), info.rotation)
                prev_t = t
        except av.error.FFmpegError as e:
            log.warning("%s: decoding stopped early at %.2f s (%s)", info.path, k * step, _err(e))
        if prev is not None:
            end = prev_t + last_dur
            while k * step < end - 1e-9:
                yield k, prev
                k += 1


class AudioStream:
    """16 kHz mono float32 samples of a file's first audio stream, read by position.

    ``read(start, n)`` returns samples [start, start+n) (zeros past the end of the audio);
    positions must not go backwards past the last ``start`` (the samples before it are freed).
    """

    def __init__(self, info: VideoInfo, sample_rate: int = SAMPLE_RATE):
        import av

        self.sample_rate = sample_rate
        self._container = av.open(info.path)
        stream = self._container.streams.audio[0]
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self._packets = self._container.decode(stream)
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0      # absolute index (relative to the first video frame) of _buf[0]
        self._offset = None      # samples to drop (>0) or pad (<0) at the stream start
        self._video_start = info.start_time_s
        self._done = False

    def _pull(self) -> bool:
        import av

        try:
            frame = next(self._packets)
        except StopIteration:
            chunks = self._resampler.resample(None)
            self._done = True
        except av.error.FFmpegError as e:
            log.warning("audio decoding stopped early (%s)", _err(e))
            self._done = True
            return False
        else:
            if self._offset is None:
                t0 = float(frame.time) if frame.time is not None else 0.0
                self._offset = int(round((self._video_start - t0) * self.sample_rate))
                if self._offset < 0:  # audio starts after the video: pad
                    self._buf = np.zeros(-self._offset, np.float32)
                    self._offset = 0
            chunks = self._resampler.resample(frame)
        for c in chunks:
            x = c.to_ndarray().reshape(-1).astype(np.float32)
            if self._offset:
                drop = min(self._offset, len(x))
                x, self._offset = x[drop:], self._offset - drop
            self._buf = np.concatenate([self._buf, x])
        return not self._done

    def read(self, start: int, n: int) -> np.ndarray:
        if start < self._buf_start:
            raise ValueError(f"AudioStream reads forward only (asked {start}, have from {self._buf_start})")
        while not self._done and self._buf_start + len(self._buf) < start + n:
            self._pull()
        lo = start - self._buf_start
        out = self._buf[lo:lo + n]
        if len(out) < n:
            out = np.concatenate([out, np.zeros(n - len(out), np.float32)])
        # free what lies before this request
        self._buf = self._buf[lo:]
        self._buf_start = start
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    @property
    def exhausted_at(self) -> int | None:
        """The number of audio samples in the file once decoding has reached its end, else None."""
        return self._buf_start + len(self._buf) if self._done else None

    def close(self) -> None:
        self._container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
