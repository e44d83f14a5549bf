"""Image losses and metrics for the animator (LIA's recipe and a few common extras).

Pure ``jnp`` functions: jit-able, differentiable, no state. Images are NHWC ``[B, H, W, C]``
floats in [-1, 1] (the range of the data pipelines and the generator's output). Every loss
returns a float32 scalar (mean over the batch) unless a ``reduction="none"`` variant says so.

LIA's generator loss (dossier section 4.2; ``LIA-train:trainer.py, vgg19.py``) is::

    L_G = vgg_pyramid_loss(vgg, x_hat, x) + l1(x_hat, x) + gan_g_loss(D(x_hat))
    L_D = gan_d_loss(D(x), D(x_hat))

with every term at weight 1 and no R1 / path-length penalty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "l1", "vgg_pyramid_loss", "antialias_downsample", "antialias_taps", "pyramid_scales",
    "ms_ssim", "ms_ssim_loss", "MS_SSIM_WEIGHTS", "gradient_energy", "gradient_loss", "gan_g_loss",
    "gan_d_loss", "psnr",
]

DATA_RANGE = 2.0  # images in [-1, 1]
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik (2003)


def _f32(x) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if x.dtype != jnp.float64 else x


def _check_pair(x, y, fn: str):
    if x.shape != y.shape:
        raise ValueError(f"{fn}: x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim != 4:
        raise ValueError(f"{fn}: expects NHWC images [B, H, W, C], got shape {x.shape}")


# ------------------------------------------------------------------------------- pixel losses

def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error over all elements (``F.l1_loss``). Any equal shapes; scalar."""
    x, y = _f32(x), _f32(y)
    if x.shape != y.shape:
        raise ValueError(f"l1: x and y must have the same shape, got {x.shape} and {y.shape}")
    return jnp.mean(jnp.abs(x - y))


def gradient_energy(x: jax.Array) -> jax.Array:
    """mean |dH(x)| + mean |dW(x)| (forward differences) of [B, H, W, C] images: a sharpness
    measure. The ratio recon/target is 1 for an image as detailed as the target, below 1 for a
    blurred one. Scalar, in the images' units."""
    x = _f32(x)
    return jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1])) + jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1]))


def gradient_loss(x: jax.Array, y: jax.Array) -> jax.Array:
    """L1 between the images' finite differences, vertical plus horizontal.

    ``mean|dH(x) - dH(y)| + mean|dW(x) - dW(y)|`` with ``dH(x) = x[:, 1:] - x[:, :-1]`` and
    ``dW(x) = x[:, :, 1:] - x[:, :, :-1]`` (forward differences, no padding). [B, H, W, C] each
    (H, W >= 2); scalar, in the images' units (0 .. 8 for [-1, 1] images).
    """
    _check_pair(x, y, "gradient_loss")
    x, y = _f32(x), _f32(y)
    dh = lambda a: a[:, 1:] - a[:, :-1]
    dw = lambda a: a[:, :, 1:] - a[:, :, :-1]
    return jnp.mean(jnp.abs(dh(x) - dh(y))) + jnp.mean(jnp.abs(dw(x) - dw(y)))


def change_map(source: jax.Array, target: jax.Array) -> jax.Array:
    """Where a target differs from its source: ``mean_c |target - source|``, [B, H, W, 1], >= 0.

    The self-reconstruction losses are dominated by pixels the source already gets right
    (background, hair, skin); this map puts weight on the ones that moved (mouth, eyes, the
    edges a pose change shifts). It is a constant of the batch (no gradient).
    """
    _check_pair(source, target, "change_map")
    diff = jnp.abs(_f32(target) - _f32(source))
    return jax.lax.stop_gradient(jnp.mean(diff, axis=-1, keepdims=True))


def weighted_l1(x: jax.Array, y: jax.Array, weight: jax.Array, *, eps: float = 1e-6) -> jax.Array:
    """``sum(w |x - y|) / (C sum(w))`` per image, averaged over the batch: the L1 inside a soft mask.

    x, y [B, H, W, C]; weight [B, H, W, 1] (>= 0; e.g. ``change_map``). Scalar, in image units;
    an all-zero weight gives 0.
    """
    _check_pair(x, y, "weighted_l1")
    x, y, weight = _f32(x), _f32(y), _f32(weight)
    num = jnp.sum(weight * jnp.abs(x - y), axis=(1, 2, 3))
    den = jnp.sum(weight, axis=(1, 2, 3)) * x.shape[-1]
    return jnp.mean(num / (den + eps))


def box_mask(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """[B, H, W, 1] float32: 1 inside each image's box, 0 outside; a weight for ``weighted_l1``.

    boxes: int [B, 4] (row0, row1, col0, col1), half-open, in pixels (the animator's
    ``mouth_box``).
    """
    b = jnp.asarray(boxes, jnp.int32)[:, :, None, None]
    rows = jnp.arange(height, dtype=jnp.int32)[None, :, None]
    cols = jnp.arange(width, dtype=jnp.int32)[None, None, :]
    inside = (rows >= b[:, 0]) & (rows < b[:, 1]) & (cols >= b[:, 2]) & (cols < b[:, 3])
    return inside.astype(jnp.float32)[..., None]


def psnr(x: jax.Array, y: jax.Array, *, data_range: float = DATA_RANGE,
         reduction: str = "mean") -> jax.Array:
    """Peak signal-to-noise ratio in dB, per image, for images spanning ``data_range`` (2 for [-1, 1]).

    ``10 log10(data_range**2 / MSE)`` with the MSE over all of an image's pixels and channels;
    ``+inf`` for identical images. No clipping or quantisation is applied.
    [B, ...] each; ``reduction="mean"``: scalar mean of the per-image values, ``"none"``: [B].
    """
    x, y = _f32(x), _f32(y)
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"psnr: expects two equal-shaped batches [B, ...], got {x.shape} and {y.shape}")
    mse = jnp.mean(jnp.square(x - y), axis=tuple(range(1, x.ndim)))
    values = 10.0 * jnp.log10(data_range ** 2 / mse)
    return _reduce(values, reduction, "psnr")


def _reduce(values, reduction: str, fn: str):
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "none":
        return values
    raise ValueError(f"{fn}: reduction must be 'mean' or 'none', got {reduction!r}")


# ------------------------------------------------------------------------------- GAN losses

def gan_g_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss ``mean(softplus(-D(fake)))``. Logits of any shape; scalar."""
    return jnp.mean(jax.nn.softplus(-_f32(fake_logits)))


def gan_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Discriminator loss ``mean(softplus(-D(real))) + mean(softplus(D(fake)))`` (LIA / StyleGAN2,
    no R1). Logits of any shapes (the two means are taken separately); scalar."""
    return (jnp.mean(jax.nn.softplus(-_f32(real_logits)))
            + jnp.mean(jax.nn.softplus(_f32(fake_logits))))


# ------------------------------------------------------------------------------- pyramid + VGG

def antialias_taps(scale: float) -> np.ndarray:
    """1-D taps of FOMM/LIA's ``AntiAliasInterpolation2d`` Gaussian for a downscale ``scale`` < 1.

    ``sigma = (1/scale - 1) / 2``, ``size = 2 * round(4 sigma) + 1`` (Python's round), normalised
    to sum 1. The official 2-D kernel is the normalised outer product of these taps.
    Sizes: 5 taps at 1/2, 13 at 1/4, 29 at 1/8.
    """
    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1
    t = np.arange(size, dtype=np.float64)
    taps = np.exp(-((t - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    return (taps / taps.sum()).astype(np.float32)


def _band_matrix(taps, n: int, stride: int) -> np.ndarray:
    """[n_out, n] float32: row o holds ``taps`` from column o * stride (a VALID correlation)."""
    taps = np.asarray(taps, np.float64)
    n_out = (n - len(taps)) // stride + 1
    m = np.zeros((n_out, n), np.float64)
    for o in range(n_out):
        m[o, o * stride:o * stride + len(taps)] = taps
    return m.astype(np.float32)


def _depthwise_1d(x: jax.Array, taps, axis: int, stride: int = 1) -> jax.Array:
    """Correlate every channel of NHWC ``x`` with ``taps`` along H (axis 1) or W (axis 2), VALID,
    keeping every ``stride``-th output: a product with a banded matrix. On XLA:CPU this is
    several times faster, forward and backward, than a grouped (depthwise) convolution or a
    sum of shifted slices (the MS-SSIM loss's gradient at [8,64,64,3]: 82 -> 3.5 ms, 1 core)."""
    m = jnp.asarray(_band_matrix(taps, x.shape[axis], stride), x.dtype)
    spec = "oh,bhwc->bowc" if axis == 1 else "ow,bhwc->bhoc"
    return jnp.einsum(spec, m, x, precision=lax.Precision.HIGHEST)


def antialias_downsample(x: jax.Array, scale: float) -> jax.Array:
    """LIA's ``AntiAliasInterpolation2d``: Gaussian blur (zero padding) then keep every ``1/scale``-th
    pixel from the first. [B, H, W, C] -> [B, ceil(H*scale), ceil(W*scale), C]; identity at 1."""
    if scale == 1:
        return x
    taps = antialias_taps(scale)
    ka = len(taps) // 2
    step = int(1 / scale)
    x = jnp.pad(x, ((0, 0), (ka, ka), (ka, ka), (0, 0)))
    x = _depthwise_1d(x, taps, axis=1, stride=step)
    return _depthwise_1d(x, taps, axis=2, stride=step)


def pyramid_scales(scales: int | Sequence[float]) -> tuple[float, ...]:
    """``4 -> (1, 0.5, 0.25, 0.125)``; an explicit sequence is returned as a tuple."""
    if isinstance(scales, int):
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales}")
        return tuple(0.5 ** i for i in range(scales))
    return tuple(float(s) for s in scales)


def vgg_pyramid_loss(vgg_module: Callable[[jax.Array], Sequence[jax.Array]], x: jax.Array,
                     y: jax.Array, scales: int | Sequence[float] = 4,
                     weight: float | Sequence[float] = 10.0) -> jax.Array:
    """LIA's perceptual loss: anti-aliased pyramid x VGG19 slices, mean L1 each, weighted, summed.

    ``sum_{s in scales} sum_{i < 5} weight_i * mean|VGG_i(down_s(x)) - stop_gradient(VGG_i(down_s(y)))|``

    Args:
      vgg_module: ``images [B, H, W, 3] in [-1, 1] -> 5 feature maps`` (relu1_1 .. relu5_1), e.g.
        :class:`gohd_jax.models.vgg19.VGG19Features` (which clamps and ImageNet-normalises). Inside
        a jitted step pass it through ``nnx.split``/``nnx.merge`` so its weights are arguments,
        not constants baked into the program.
      x: generated images [B, H, W, 3] in [-1, 1] (gradients flow into it).
      y: target images, same shape (treated as constants, like LIA's ``.detach()``).
      scales: number of pyramid levels (4: 1, 1/2, 1/4, 1/8, as LIA) or the scales themselves.
      weight: one weight for all slices (LIA: 10) or one per slice.

    Returns:
      Scalar: LIA's ``VGGLoss`` value (4 x 5 = 20 terms at 256 px).

    Small images: VGG halves the size 4 times before relu5_1, so a pyramid level under 16 px has
    an empty relu5_1 (under 8 px also an empty relu4_1, ...). Empty feature maps are skipped
    (PyTorch would refuse the pooling): at 128 px and above all 20 terms exist; a 64 px image
    keeps 19 (relu5_1 of the 8 px level is empty), a 32 px image 17.
    """
    _check_pair(x, y, "vgg_pyramid_loss")
    b = x.shape[0]
    total = jnp.zeros((), jnp.float32)
    for s in pyramid_scales(scales):
        both = jnp.concatenate([antialias_downsample(x, s), antialias_downsample(y, s)], axis=0)
        feats = list(vgg_module(both))
        weights = ([float(weight)] * len(feats) if np.ndim(weight) == 0 else [float(w) for w in weight])
        if len(weights) != len(feats):
            raise ValueError(f"vgg_pyramid_loss: {len(weights)} weights for {len(feats)} feature maps")
        for w, f in zip(weights, feats):
            if f.size == 0:
                continue
            fx, fy = f[:b], lax.stop_gradient(f[b:])
            total = total + w * jnp.mean(jnp.abs(_f32(fx) - _f32(fy)))
    return total


# ------------------------------------------------------------------------------- MS-SSIM

def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(t ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


def _ssim_terms(x, y, taps, data_range):
    """Spatial means of the SSIM and contrast-structure maps (Gaussian window, VALID): [B, C] each."""
    def blur(a):
        return _depthwise_1d(_depthwise_1d(a, taps, axis=1), taps, axis=2)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs_map
    return jnp.mean(ssim_map, axis=(1, 2)), jnp.mean(cs_map, axis=(1, 2))


def _avg_pool2(x):
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    x = x[:, :h, :w]
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


def ms_ssim(x: jax.Array, y: jax.Array, *, data_range: float = DATA_RANGE, win_size: int = 11,
            sigma: float = 1.5, scales: int | None = None,
            weights: Sequence[float] = MS_SSIM_WEIGHTS, reduction: str = "mean") -> jax.Array:
    """Multi-scale SSIM (Wang et al. 2003), Gaussian window, per channel, in [0, 1] (1: identical).

    ``MS = prod_{j < n-1} cs_j ** w_j * ssim_{n-1} ** w_{n-1}`` where ``ssim_j`` / ``cs_j`` are the
    spatial means of the SSIM / contrast-structure maps at scale j (window ``win_size`` px,
    ``sigma`` px, 'valid' filtering, constants ``(0.01 L)**2``, ``(0.03 L)**2`` with
    ``L = data_range``), scale j+1 being scale j 2x2-average-pooled (odd sizes drop the last
    row/column). Each ``cs_j``/``ssim`` is clamped to >= 1e-6 before the power (finite gradients).

    Small images: the standard 5 scales need a side of at least ``win_size * 16`` (176 px). With
    ``scales=None`` the number of scales is the largest n <= len(weights) whose coarsest level is
    still >= ``win_size`` px, and the first n weights are renormalised to sum to 1: 5 scales at 256 px,
    3 at 64 px (64, 32, 16), 2 at 32 px, 1 below 22 px; an image smaller than the window shrinks
    the window to the largest odd size that fits. With ``scales=1`` this is plain SSIM.

    Args:
      x, y: [B, H, W, C] in [-1, 1] (``data_range`` 2).
      reduction: ``"mean"`` scalar over batch and channels, or ``"none"`` [B] (mean over channels).
    """
    _check_pair(x, y, "ms_ssim")
    x, y = _f32(x), _f32(y)
    side = min(x.shape[1], x.shape[2])
    if side < win_size:
        win_size = side if side % 2 else side - 1
        if win_size < 1:
            raise ValueError(f"ms_ssim: images of shape {x.shape} are too small")
    if scales is None:
        scales = 1
        while scales < len(weights) and side // 2 ** scales >= win_size:
            scales += 1
    if not 1 <= scales <= len(weights):
        raise ValueError(f"ms_ssim: scales must be in 1..{len(weights)}, got {scales}")
    if side // 2 ** (scales - 1) < win_size:
        raise ValueError(f"ms_ssim: {scales} scales need a side of at least "
                         f"{win_size * 2 ** (scales - 1)} px, images are {side} px")
    w = np.asarray(weights[:scales], np.float64)
    w = (w / w.sum()).astype(np.float32)
    taps = _gaussian_taps(win_size, sigma)
    value = jnp.ones(x.shape[:1] + x.shape[-1:], jnp.float32)
    for j in range(scales):
        ssim_j, cs_j = _ssim_terms(x, y, taps, data_range)
        term = ssim_j if j == scales - 1 else cs_j
        value = value * jnp.maximum(term, 1e-6) ** w[j]
        if j < scales - 1:
            x, y = _avg_pool2(x), _avg_pool2(y)
    return _reduce(jnp.mean(value, axis=-1), reduction, "ms_ssim")


def ms_ssim_loss(x: jax.Array, y: jax.Array, **kwargs) -> jax.Array:
    """``1 - ms_ssim(x, y, **kwargs)``: 0 for identical images, up to 1. Scalar."""
    return 1.0 - ms_ssim(x, y, **kwargs)
