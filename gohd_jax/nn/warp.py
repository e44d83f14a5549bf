"""Flow warping as GoHD/LIA do it: PyTorch ``F.grid_sample`` defaults on NHWC features.

``grid_sample``: bilinear, zero padding, ``align_corners=False``: a grid value g in [-1, 1] samples
pixel coordinate ((g + 1)·W − 1) / 2 (and likewise for y with H); taps outside the image read 0.

``identity_grid``: the official ToFlow's base grid, ``np.linspace(-1, 1, r)`` computed in float64,
**rounded to float32** (``torch.tensor(...).float()``), and only then cast to the compute dtype.
linspace spans pixel centres -1 … 1 while align_corners=False maps ±1 to the outer pixel *edges*,
a half-pixel mismatch (dossier §11.7) that the released weights were trained with; it is
reproduced for the released weights. ``identity_grid(..., release=False)`` gives the exact
identity instead (pixel centres (2i + 1)/W - 1), which a model trained from scratch can use: a
zero field then copies the features without resampling them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["identity_grid", "grid_sample"]


def identity_grid(height: int, width: int | None = None, dtype=jnp.float32, *,
                  release: bool = True) -> jax.Array:
    """[H, W, 2] grid, channel 0 = x (varies along W), channel 1 = y.

    ``release=True``: the official float32-rounded ``linspace(-1, 1, n)`` (a (n-1)/n zoom under
    ``grid_sample``); ``release=False``: the pixel centres, which ``grid_sample`` maps back to
    exactly the input.
    """
    width = height if width is None else width

    def axis(n):
        if release:
            return np.linspace(-1.0, 1.0, n).astype(np.float32)
        return ((2.0 * np.arange(n) + 1.0) / n - 1.0).astype(np.float32)

    xs, ys = axis(width), axis(height)
    gx, gy = np.meshgrid(xs, ys)
    return jnp.asarray(np.stack([gx, gy], axis=-1), dtype=dtype)


def grid_sample(feat: jax.Array, grid: jax.Array) -> jax.Array:
    """Bilinear ``F.grid_sample(feat, grid)`` (zeros padding, align_corners=False), NHWC.

    feat [B, H, W, C] (or [1, H, W, C]: one feature map shared by every grid in the batch,
    never materialised B times); grid [B, Ho, Wo, 2] with (x, y) in the last axis.
    Returns [B, Ho, Wo, C] in the grid's dtype. The coordinates and the bilinear weights are
    computed in the grid's dtype (float32: the warp coordinates never lose precision); the taps
    are gathered, weighted and summed in feat's dtype, so bfloat16 features are never copied to
    float32 (compiled for v5e at batch 64, that copy was 4 GiB of temporaries per chip and
    ~0.7 GB of memory traffic per frame; BENCHMARKS.md "Fit on accelerators").
    """
    if feat.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid_sample wants feat [B,H,W,C] and grid [B,Ho,Wo,2]; got "
                         f"{feat.shape} and {grid.shape}")
    b, ho, wo, _ = grid.shape
    bf, h, w, c = feat.shape
    if bf not in (1, b):
        raise ValueError(f"grid_sample: feature batch {bf} must be 1 or the grid batch {b}")
    dtype = grid.dtype
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0 = jnp.floor(ix)
    y0 = jnp.floor(iy)
    wx1 = ix - x0
    wx0 = 1 - wx1
    wy1 = iy - y0
    wy0 = 1 - wy1
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    flat = feat.reshape(bf, h * w, c)

    def tap(yi, xi, weight):
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).reshape(b, ho * wo)
        weight = jnp.where(valid, weight, jnp.zeros((), dtype))
        if bf == 1:
            vals = flat[0][idx]  # [B, Ho*Wo, C]
        else:
            vals = jax.vmap(lambda f, i: f[i])(flat, idx)
        return vals.reshape(b, ho, wo, c) * weight[..., None].astype(vals.dtype)

    # Same order of accumulation as torch: nw + ne + sw + se.
    out = (tap(y0, x0, wy0 * wx0) + tap(y0, x0 + 1, wy0 * wx1)
           + tap(y0 + 1, x0, wy1 * wx0) + tap(y0 + 1, x0 + 1, wy1 * wx1))
    return out.astype(dtype)
