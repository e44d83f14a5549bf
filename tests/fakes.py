"""Small, fast, deterministic clip factories for tests of the record and pipeline code
(independent of the synthetic generator and of librosa)."""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines import schema


@dataclasses.dataclass(frozen=True)
class FakeClips:
    """Item i -> a raw clip of ``frames + i % 3`` frames at ``size`` px, identity i % identities.

    Frame f of clip i is a flat colour encoding (i, f); descriptor[f] = i + f / 1000; mels are
    constant arrays of the schema's shapes. ``fail_on`` items raise ValueError; ``crash_on``
    items raise KeyboardInterrupt (a simulated kill). ``landmarks`` adds ``aux/landmarks`` [T,68,2]
    (pixels; the mouth, 48-67, in the lower middle, opening with the frame index), which the
    animator's mouth loss reads.
    """

    frames: int = 8
    size: int = 16
    identities: int = 4
    fail_on: tuple[int, ...] = ()
    crash_on: tuple[int, ...] = ()
    landmarks: bool = False

    def __call__(self, i: int) -> dict:
        if i in self.crash_on:
            raise KeyboardInterrupt(f"simulated kill at item {i}")
        if i in self.fail_on:
            raise ValueError(f"item {i} is broken")
        t = self.frames + i % 3
        frames = np.zeros((t, self.size, self.size, 3), np.uint8)
        frames[..., 0] = (i * 37) % 256
        frames[..., 1] = (np.arange(t) * 20)[:, None, None] % 256
        desc = np.tile((i + np.arange(t) / 1000.0)[:, None], (1, 72)).astype(np.float32)
        n = t * schema.SAMPLES_PER_FRAME
        aux = {"frame": np.arange(t, dtype=np.int32)}
        if self.landmarks:
            lm = np.tile(np.linspace(0.2, 0.8, 68)[:, None] * self.size, (t, 1, 2))
            lm[:, 48:68, 0] = np.linspace(0.35, 0.65, 20) * self.size
            lm[:, 48:68, 1] = 0.75 * self.size + np.sin(np.arange(20))[None] * (np.arange(t) % 4)[:, None]
            aux["landmarks"] = lm.astype(np.float32)
        return {
            "clip_id": f"fake-{i:04d}", "identity_id": f"person-{i % self.identities}", "source_id": "fake",
            "frames": frames,
            "audio": np.sin(np.arange(n, dtype=np.float32) * (0.01 + 0.001 * i)).astype(np.float32),
            "descriptors": desc,
            "controls": np.full((t, 21), i, np.float32),
            "mel_80hz": np.full((1 + n // 200, 80), i % 4, np.float32),
            "mel_100hz": np.full((1 + n // 160, 80), (i % 4) / 4, np.float32),
            "aux": aux,
        }
