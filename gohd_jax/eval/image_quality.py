"""PSNR, SSIM and L1 of generated frames against the real ones (self-reconstruction protocols).

Per frame pair, on RGB images scaled to [0, 1]:

* PSNR = 10 log10(1 / MSE), the MSE over all pixels and channels (``dm_pix.psnr``; an identical
  pair counts 100 dB instead of infinity);
* SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, computed per
  channel and averaged (``dm_pix.ssim``: equal to scikit-image's ``structural_similarity`` with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``; skimage's
  default 7x7 uniform window gives other numbers);
* L1 = mean |generated - real| on the 0-255 scale.

A clip's value is the mean over its frames; the report's is the mean over clips. Frames are paired
by index (the shorter clip decides the count); when the sizes differ, the real frame is resized
to the generated one's size (bilinear, half-pixel centres) and the report says so.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["frame_quality", "clip_quality"]

CHUNK = 16  # frames per jitted call (the last chunk is padded: one compile per frame size)


@partial(jax.jit)
def frame_quality(generated: jax.Array, real: jax.Array) -> dict[str, jax.Array]:
    """uint8 [B,H,W,3] pairs -> per-frame ``psnr`` (dB), ``ssim``, ``l1`` (0-255), each [B]."""
    import dm_pix

    g = generated.astype(jnp.float32) / 255.0
    r = real.astype(jnp.float32) / 255.0
    return {"psnr": dm_pix.psnr(g, r), "ssim": dm_pix.ssim(g, r, max_val=1.0),
            "l1": jnp.mean(jnp.abs(generated.astype(jnp.int32) - real.astype(jnp.int32)), axis=(1, 2, 3))}


def clip_quality(generated: np.ndarray, real: np.ndarray) -> dict[str, float | int | bool]:
    """Means over the paired frames of ``generated`` [T,H,W,3] and ``real`` [T',H',W',3] (uint8):
    ``psnr``, ``ssim``, ``l1``, ``frames`` (pairs compared) and ``resized`` (real frames resized)."""
    from gohd_jax.eval.clips import resize_bilinear

    n = min(len(generated), len(real))
    if n == 0:
        raise ValueError("no frames to compare")
    resized = generated.shape[1:3] != real.shape[1:3]
    sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0}
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        g = generated[start:stop]
        r = real[start:stop]
        if resized:
            r = np.stack([resize_bilinear(f, *generated.shape[1:3]) for f in r])
        pad = CHUNK - len(g)
        if pad:
            g = np.concatenate([g, np.repeat(g[-1:], pad, 0)])
            r = np.concatenate([r, np.repeat(r[-1:], pad, 0)])
        out = jax.device_get(frame_quality(g, r))
        for k in sums:
            values = np.asarray(out[k][:stop - start], np.float64)
            sums[k] += float(np.sum(np.minimum(values, 100.0) if k == "psnr" else values))
    return {**{k: v / n for k, v in sums.items()}, "frames": n, "resized": bool(resized)}
