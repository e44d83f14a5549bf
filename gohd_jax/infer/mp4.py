"""Streaming H.264 mp4 writer with the input audio muxed (PyAV), frames written as they come.

``Mp4Writer(path, size, audio=wav16k)``: ``write(frames [n,H,W,3] uint8)`` encodes the frames and
the n x 640 audio samples they cover, so video and audio interleave and nothing accumulates;
``close()`` flushes both encoders. The output has exactly as many video frames as were written,
at 25 fps, and the audio trimmed or zero-padded to the same length. The file is written as
``PATH.partial`` and renamed to ``PATH`` by ``close()``, so a ``PATH`` that exists is complete (a
crash or kill leaves only the ``.partial``); ``abort()`` deletes the partial file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["Mp4Writer"]

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS


class Mp4Writer:
    """``size``: the frame side in pixels, or (height, width) for non-square frames (both even)."""

    def __init__(self, path: str | Path, size: int | tuple[int, int], *, audio: np.ndarray | None = None,
                 crf: int = 18):
        import av

        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._out = av.open(str(self.partial), "w", format="mp4")
        self._v = self._out.add_stream("libx264", rate=FPS)
        height, width = (size, size) if np.isscalar(size) else size
        self._v.width, self._v.height = int(width), int(height)
        self._v.pix_fmt = "yuv420p"
        # mbtree off: with it, x264 encoded the same 64 px frames differently from run to run (seen
        # in one of four encodes; never with mbtree=0, nor at 128 or 256 px), and a clip is promised
        # the same bytes for the same seed
        self._v.options = {"crf": str(int(crf)), "preset": "veryfast", "x264-params": "mbtree=0"}
        self._a = None
        self._audio = None if audio is None else np.asarray(audio, np.float32)
        if self._audio is not None:
            self._a = self._out.add_stream("aac", rate=SAMPLE_RATE)
            self._a.layout = "mono"
            self._a_pos = 0          # audio samples taken from the input so far
            self._a_out = 0          # audio samples handed to the encoder (its frames' pts)
            self._a_pending = np.zeros(0, np.int16)
        self.frames = 0

    def _audio_upto(self, n_samples: int, final: bool = False) -> None:
        import av

        want = self._audio[self._a_pos:n_samples]
        if len(want) < n_samples - self._a_pos:
            want = np.concatenate([want, np.zeros(n_samples - self._a_pos - len(want), np.float32)])
        self._a_pos = n_samples
        pcm = np.concatenate([self._a_pending, (np.clip(want, -1, 1) * 32767).astype(np.int16)])
        size = self._a.codec_context.frame_size or 1024
        cut = len(pcm) if final else len(pcm) // size * size
        for k in range(0, cut, size):
            chunk = pcm[k:k + size]
            frame = av.AudioFrame.from_ndarray(chunk[None], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._a_out
            frame.time_base = Fraction(1, SAMPLE_RATE)
            self._a_out += len(chunk)
            for p in self._a.encode(frame):
                self._out.mux(p)
        self._a_pending = pcm[cut:]

    def write(self, frames: np.ndarray) -> None:
        import av

        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f, np.uint8), format="rgb24")
            vf.pts = self.frames
            vf.time_base = Fraction(1, FPS)
            for p in self._v.encode(vf):
                self._out.mux(p)
            self.frames += 1
        if self._a is not None:
            self._audio_upto(self.frames * SAMPLES_PER_FRAME)

    def close(self) -> None:
        if self._out is None:
            return
        try:
            for p in self._v.encode():
                self._out.mux(p)
            if self._a is not None:
                self._audio_upto(self.frames * SAMPLES_PER_FRAME, final=True)
                for p in self._a.encode():
                    self._out.mux(p)
        finally:
            self._out.close()
            self._out = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Closes and deletes a partial output (after an error)."""
        try:
            if self._out is not None:
                self._out.close()
        except Exception:
            pass
        self._out = None
        self.partial.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()
