"""Pose / gaze for audio of any length: windows with a one-frame overlap, at constant memory.

As the official ``inference.py: get_target_seqs``: frame 0 of the output is the given first
frame (the source's pose0 / gaze0). Windows start at frames 0, L-1, 2(L-1), ... and span L frames;
each makes its L-1 new frames while conditioned on the previous window's last generated frame as
pose0 / gaze0, and for pose adds it back (residual head pose). So consecutive windows share one
frame and the motion carries across.

Two alignments of the window (``WindowSampler(alignment=...)``):

* ``"release"`` (for the official weights): the shared frame's mel is dropped (``mel[1:]``) and
  the denoiser runs on the L-1 new frames, so its index 0 is the frame after pose0.
* ``"training"`` (for models from our trainer, the default of ``configs/motion.py``): the denoiser
  runs on all L frames, the shared frame's mel included, as in training (where index 0 is the
  window's first frame, a zero residual). Index 0 is the shared frame, whose value is known: the
  window is translated so that index 0 lands exactly on the previous frame, and dropped. The
  denoiser's index 0 is not exactly the known value (translation-invariant attention has no
  notion of "first"), and without this the step into each window's first new frame was 2.7x the
  steps elsewhere on the tiny pose model; with it, 0.7x (BENCHMARKS.md). Holding index 0 at the
  known value during sampling (replacement inpainting) left a 2.3x jump, so the translation it is.
  That holds for the residual target (pose). An absolute target (gaze) keeps the denoiser's values
  and only sets index 0 to the known frame: translating it would carry each window's index-0
  error into every later window, a random walk (in ``make demo`` the tiny gaze model's held-out
  mean drifted to +0.18 rad against the data's -0.04, and its windows' Frechet distance was 4x
  that of holding gaze0; without the translation it came below both baselines).

Memory: the host loop moves one window's condition [B, L or L-1, Dl] to the devices and one window's
result back, so device memory does not grow with the clip length; every window has the same
shape (the last one's condition is padded by repeating its final frame, and the padded outputs
are dropped), so the sampler compiles once. This padding is the one difference from the release,
whose last window is shorter.

The window's key is ``fold_in(key, window_index)``: a fresh initial noise per window, as the
release draws, reproducible from one seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gohd_jax.diffusion import samplers

__all__ = ["WindowSampler", "iter_windows", "generate_long", "window_starts"]


def window_starts(num_frames: int, window: int) -> list[int]:
    """First frame of every window (stride window - 1) that still has new frames to make."""
    if window < 2:
        raise ValueError(f"window must be >= 2 frames (one shared + new ones), got {window}")
    return list(range(0, max(num_frames - 1, 0), window - 1))


ALIGNMENTS = ("release", "training")


class WindowSampler:
    """One jitted window: (local_cond [B,N,Dl], previous frame [B,C], key) -> frames [B,N,C],
    N = L-1 (``alignment="release"``) or L (``"training"``; index 0 is the shared frame).

    ``residual``: the output is added to the previous frame (pose); else absolute (gaze). The
    previous frame is also the global condition. ``data_scale``: the model works on motion x
    ``data_scale`` (1 for the official weights; see ``MotionDiffusionTask``): the global
    condition is multiplied by it and the clamped sample divided by it. Inputs may be sharded
    over the batch (e.g. ``parallel.batch_sharding``); the result keeps that sharding.
    """

    def __init__(self, model: nnx.Module, *, spec: samplers.SamplerSpec = samplers.SamplerSpec(),
                 residual: bool, alignment: str, data_scale: float = 1.0, betas=None):
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        self.alignment = alignment
        self.graphdef, self.state = nnx.split(model)
        self.channels = model.cfg.in_channels
        self.spec, self.residual, self.data_scale = spec, residual, float(data_scale)
        self.chain = samplers.chain_for(spec, betas)
        self._fn = jax.jit(self._window)

    def _window(self, state, cond, prev, key):
        model = nnx.merge(self.graphdef, state)
        b, t = cond.shape[:2]
        n = len(self.chain["n"])
        if key.ndim == 1:  # one key per row: each row's noise is independent of the batch
            x0, z = jax.vmap(lambda k: samplers.draw_noise(k, n, (t, self.channels)))(key)
            z = jnp.swapaxes(z, 0, 1)
        else:
            x0, z = samplers.draw_noise(key, n, (b, t, self.channels))
        x, _ = samplers.run_chain(model, x0, self.chain, z, cond, prev * self.data_scale)
        x = jnp.clip(x, -1.0, 1.0) / self.data_scale
        if self.alignment == "training":  # index 0 is the shared frame: it lands exactly on prev
            if not self.residual:  # absolute (gaze): no translation, which would drift (module doc)
                return x.at[:, 0].set(prev)
            x = x - x[:, :1]
        return x + prev[:, None, :] if self.residual else x

    def __call__(self, cond: jax.Array, prev: jax.Array, key: jax.Array) -> jax.Array:
        return self._fn(self.state, cond, prev, key)

    def cache_size(self) -> int:
        """How many shapes the window function has compiled for (1 for any clip length)."""
        return self._fn._cache_size()


def iter_windows(sampler: WindowSampler, local_cond, first, *, window: int, key: jax.Array,
                 put: Callable[[np.ndarray], jax.Array] | None = None
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(start, frames)``: frames [B, n, C] (host numpy) for output frames
    ``start .. start+n-1``; the first item is ``(0, first[:, None])``.

    ``local_cond`` [B,T,Dl] (host numpy or any array; read one window at a time), ``first`` [B,C].
    ``put`` places a host array on the devices (default ``jnp.asarray``; pass e.g.
    ``lambda a: jax.device_put(a, batch_sharding(mesh, a.ndim))`` to shard the batch).
    ``key``: one key, or one per row ([B] key array: each row's motion then depends only on its
    own key and inputs, not on the rest of the batch).
    """
    put = put or jnp.asarray
    b, t = local_cond.shape[:2]
    if t < 1:
        raise ValueError("local_cond has no frames: the audio is empty")
    first = np.asarray(first, np.float32)
    if first.shape != (b, sampler.channels):
        raise ValueError(f"first frame must be [B={b}, C={sampler.channels}], got {first.shape}")
    yield 0, first[:, None, :]
    prev = put(first)
    skip = 1 if sampler.alignment == "training" else 0  # leading outputs that are not new frames
    width = window - 1 + skip
    for w, start in enumerate(window_starts(t, window)):
        lo, hi = start + 1, min(start + window, t)  # the new frames
        cond = np.asarray(local_cond[:, lo - skip:hi], np.float32)
        if cond.shape[1] < width:  # the last window: repeat its final frame to the common shape
            cond = np.concatenate([cond, np.repeat(cond[:, -1:], width - cond.shape[1], axis=1)], axis=1)
        wkey = (jax.vmap(lambda k: jax.random.fold_in(k, w))(key) if key.ndim == 1
                else jax.random.fold_in(key, w))
        # sliced on the host: slicing the device array would compile a program per window length
        out = np.asarray(sampler(put(cond), prev, wkey))[:, skip:skip + hi - lo]
        prev = put(np.ascontiguousarray(out[:, -1]))
        yield lo, out


def generate_long(sampler: WindowSampler, local_cond, first, *, key: jax.Array, window: int = 150,
                  put=None) -> np.ndarray:
    """The whole [B,T,C] motion (host numpy) for ``local_cond`` [B,T,Dl] from ``first`` [B,C]."""
    b, t = local_cond.shape[:2]
    out = np.empty((b, t, sampler.channels), np.float32)
    for start, frames in iter_windows(sampler, local_cond, first, window=window, key=key, put=put):
        out[:, start:start + frames.shape[1]] = frames
    return out
