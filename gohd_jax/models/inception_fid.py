"""The FID Inception-v3 (pytorch-fid's ``InceptionV3`` with the TF-2015 weights) in Flax NNX, NHWC.

The network every published FID number is measured with: TensorFlow's ``inception-2015-12-05``
graph as pytorch-fid ports it (``fid_inception_v3``: torchvision's ``Inception3`` layout with
the FID patches), cut after the final average pool. Inference only.

Forward (``FIDInceptionV3(images)``):

1. images [B,H,W,3], RGB in [0, 1], any H and W;
2. bilinear resize to 299x299 as ``F.interpolate(mode='bilinear', align_corners=False)`` does it,
   **without** antialiasing, also when shrinking (``resize_bilinear``; ``jax.image.resize``
   antialiases on downscale and would not match);
3. ``2x - 1`` -> [-1, 1];
4. block 0: Conv2d_1a_3x3 (3x3/2), Conv2d_2a_3x3 (3x3), Conv2d_2b_3x3 (3x3 pad 1), max pool
   3x3/2 -> [B,73,73,64];
   block 1: Conv2d_3b_1x1, Conv2d_4a_3x3 (3x3), max pool 3x3/2 -> [B,35,35,192];
   block 2: Mixed_5b/5c/5d (Inception-A), Mixed_6a (B, reduction), Mixed_6b..6e (C)
   -> [B,17,17,768];
   block 3: Mixed_7a (D, reduction), Mixed_7b (E, average pool branch), Mixed_7c (E, **max**
   pool branch: a quirk of the TF graph kept by pytorch-fid), global average -> [B,1,1,2048];
5. returns the pool features [B,2048] (float32 for float32 input).

Every conv is ``BasicConv2d``: bias-free conv, BatchNorm on running statistics (eps 1e-3),
ReLU. The pooling branches of the A, C and first E blocks average 3x3 windows with padding 1
**excluding** the padded zeros (``count_include_pad=False``, TensorFlow's convention).

Numerics: the input's dtype throughout (float32; float64 under ``jax_enable_x64`` for checks),
convolutions at ``precision`` (default ``lax.Precision.HIGHEST``, so that TPUs and GPUs keep full
float32 instead of bfloat16 / TF32 passes: FID is sensitive to feature noise). Batched and jitted
like any NNX module, one compile per input shape.

Weights: ``gohd_jax.interop.inception_weights`` (the official ``pt_inception-2015-12-05-6726825d.pth``
names map one to one onto the attribute names here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

__all__ = ["FIDInceptionV3", "BasicConv2d", "resize_bilinear", "bilinear_taps", "FEATURE_DIM",
           "INPUT_SIZE", "BLOCK_NAMES"]

FEATURE_DIM = 2048
INPUT_SIZE = 299
BLOCK_NAMES = ("block0_input", "block0", "block1", "block2", "block3")


# --------------------------------------------------------------------------------------------
# Resize (F.interpolate bilinear, align_corners=False, no antialias)
# --------------------------------------------------------------------------------------------

def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source taps of torch's ``align_corners=False`` bilinear resize along one axis.

    Output pixel d reads input ``i0[d]`` with weight ``w0[d]`` and ``i1[d]`` with ``w1[d]``:
    src = (d + 0.5)·in/out − 0.5, clamped below at 0; i0 = floor(src), i1 = min(i0 + 1, in − 1),
    w1 = src − i0, w0 = 1 − w1. No antialiasing: shrinking only interpolates
    between the two nearest inputs, whatever the ratio. Rounding as torch's CPU kernel for
    float tensors: the scale in/out is a float32, the source coordinate is computed in float64
    from it and rounded to float32 (this matters: src ~ 255 carries ~1e-5 of rounding, and the
    other orders miss torch's ``block0_input`` by 2e-6 to 1e-5 instead of 2.6e-7).

    Returns (i0 [out] int32, i1 [out] int32, w0 [out] float32, w1 [out] float32).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0.astype(np.int32), i1.astype(np.int32), w0, w1


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    i0, i1, w0, w1 = bilinear_taps(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w0 = jnp.asarray(w0, x.dtype).reshape(shape)
    w1 = jnp.asarray(w1, x.dtype).reshape(shape)
    return w0 * jnp.take(x, i0, axis=axis) + w1 * jnp.take(x, i1, axis=axis)


def resize_bilinear(x: jax.Array, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> jax.Array:
    """Images [B,H,W,C] -> [B,size[0],size[1],C], exactly ``F.interpolate(x, size,
    mode='bilinear', align_corners=False)`` (no antialias) up to float rounding; the width is
    interpolated first, then the height, as torch's kernel combines them. A same-size resize
    is the identity."""
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear wants [B,H,W,C], got shape {tuple(x.shape)}")
    out_h, out_w = size
    if x.shape[2] != out_w:
        x = _resize_axis(x, 2, out_w)
    if x.shape[1] != out_h:
        x = _resize_axis(x, 1, out_h)
    return x


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _he_normal(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """He-normal init drawn on the host from ``key`` (a random init only; real use loads the
    official weights). Host numpy, because eagerly drawing ~95 differently shaped tensors with
    ``jax.random`` compiles one program per shape (half a minute on a small CPU). Traced
    (``nnx.eval_shape``, jit): ``jax.random.normal``."""
    std = (2.0 / (shape[0] * shape[1] * shape[2])) ** 0.5
    if isinstance(key, jax.core.Tracer):  # under jit / nnx.eval_shape: no host values
        return std * jax.random.normal(key, shape, dtype)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * std, dtype)


class BasicConv2d(nnx.Module):
    """Bias-free conv (weight [kh,kw,Cin,Cout]; torch [Cout,Cin,kh,kw]) + BatchNorm (running
    statistics, eps 1e-3) + ReLU. ``kernel``/``stride``/``padding`` are ints or (h, w) pairs;
    padding is symmetric zero padding as in torch."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32, precision=lax.Precision.HIGHEST):
        kh, kw = _pair(kernel)
        self.stride = _pair(stride)
        ph, pw = _pair(padding)
        self.padding = ((ph, ph), (pw, pw))
        self.precision = precision
        self.weight = nnx.Param(_he_normal(rngs.params(), (kh, kw, cin, cout), param_dtype))
        self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-3, use_running_average=True,
                                rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = lax.conv_general_dilated(x, self.weight[...].astype(x.dtype), self.stride, self.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=self.precision)
        return jax.nn.relu(self.bn(y))


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    """3x3 max pool (padding with -inf, as torch's max_pool2d)."""
    p = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, 3, 3, 1),
                             (1, stride, stride, 1), p)


def _window_counts(n: int) -> np.ndarray:
    """How many of the 3 taps of a stride-1, padding-1 window at each position are inside."""
    i = np.arange(n)
    return (np.minimum(i + 1, n - 1) - np.maximum(i - 1, 0) + 1).astype(np.float64)


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 average pool, stride 1, padding 1, dividing by the number of real (unpadded) pixels
    (``F.avg_pool2d(..., count_include_pad=False)``)."""
    total = lax.reduce_window(x, jnp.array(0, x.dtype), lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))
    count = np.outer(_window_counts(x.shape[1]), _window_counts(x.shape[2]))
    return total / jnp.asarray(count, x.dtype)[None, :, :, None]


# --------------------------------------------------------------------------------------------
# Inception blocks (torchvision's names)
# --------------------------------------------------------------------------------------------

class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d: 1x1 64 | 1x1 48 -> 5x5 64 | 1x1 64 -> 3x3 96 -> 3x3 96 |
    avg pool (exclude pad) -> 1x1 ``pool_features``. Out: 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int, **kw):
        self.branch1x1 = BasicConv2d(cin, 64, 1, **kw)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1, **kw)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, **kw)
        self.branch_pool = BasicConv2d(cin, pool_features, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a (grid reduction 35 -> 17): 3x3/2 384 | 1x1 64 -> 3x3 96 -> 3x3/2 96 |
    max pool 3x3/2. Out: 480 + Cin channels."""

    def __init__(self, cin: int, **kw):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..6e (factorised 7x7, c7 = ``channels_7x7``): 1x1 192 |
    1x1 c7 -> 1x7 c7 -> 7x1 192 | 1x1 c7 -> 7x1 -> 1x7 -> 7x1 -> 1x7 192 |
    avg pool (exclude pad) -> 1x1 192. Out: 768 channels."""

    def __init__(self, cin: int, c7: int, **kw):
        self.branch1x1 = BasicConv2d(cin, 192, 1, **kw)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1, **kw)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, **kw)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), **kw)
        self.branch_pool = BasicConv2d(cin, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a (grid reduction 17 -> 8): 1x1 192 -> 3x3/2 320 |
    1x1 192 -> 1x7 -> 7x1 -> 3x3/2 192 | max pool 3x3/2. Out: 512 + Cin channels."""

    def __init__(self, cin: int, **kw):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1, **kw)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, **kw)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, **kw)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), **kw)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b / Mixed_7c (expanded filter bank): 1x1 320 | 1x1 384 -> [1x3 384, 3x1 384] |
    1x1 448 -> 3x3 384 -> [1x3 384, 3x1 384] | pool -> 1x1 192. Out: 2048 channels.

    ``pool``: ``"avg"`` (Mixed_7b, FIDInceptionE_1: 3x3 average excluding the padding) or
    ``"max"`` (Mixed_7c, FIDInceptionE_2: 3x3 max pool, stride 1, padding 1)."""

    def __init__(self, cin: int, pool: str, **kw):
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1, **kw)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1, **kw)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, **kw)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch_pool = BasicConv2d(cin, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _avg_pool_exclude_pad(x) if self.pool == "avg" else _max_pool(x, 1, 1)
        bp = self.branch_pool(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

class FIDInceptionV3(nnx.Module):
    """pytorch-fid's ``InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)``
    on the FID weights. ``model(images)``: [B,H,W,3] RGB in [0,1] -> pool features [B,2048].

    ``resize_input`` / ``normalize_input`` as pytorch-fid's flags (both on for FID).
    ``precision``: the convolutions' matmul precision (HIGHEST by default; see the module doc).
    Parameters are random (He) until the official weights are loaded
    (``interop.inception_weights``).
    """

    def __init__(self, *, rngs: nnx.Rngs, param_dtype=jnp.float32, resize_input: bool = True,
                 normalize_input: bool = True, precision=lax.Precision.HIGHEST):
        kw = dict(rngs=rngs, param_dtype=param_dtype, precision=precision)
        self.resize_input = resize_input
        self.normalize_input = normalize_input
        # block 0
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **kw)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **kw)
        # block 1
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **kw)
        # block 2
        self.Mixed_5b = InceptionA(192, 32, **kw)
        self.Mixed_5c = InceptionA(256, 64, **kw)
        self.Mixed_5d = InceptionA(288, 64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, 128, **kw)
        self.Mixed_6c = InceptionC(768, 160, **kw)
        self.Mixed_6d = InceptionC(768, 160, **kw)
        self.Mixed_6e = InceptionC(768, 192, **kw)
        # block 3
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, "avg", **kw)
        self.Mixed_7c = InceptionE(2048, "max", **kw)

    def prepare(self, images: jax.Array) -> jax.Array:
        """[B,H,W,3] in [0,1] -> the network input [B,299,299,3] in [-1,1] (resize, then 2x-1)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FIDInceptionV3 wants images [B,H,W,3] (NHWC, RGB in [0,1]), got "
                             f"shape {tuple(images.shape)}")
        x = images
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"images must be floating point in [0,1], got {x.dtype}")
        if self.resize_input:
            x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
        if self.normalize_input:
            x = 2 * x - 1
        return x

    def blocks(self, images: jax.Array) -> dict[str, jax.Array]:
        """Every stage, NHWC: ``block0_input`` [B,299,299,3], ``block0`` [B,73,73,64],
        ``block1`` [B,35,35,192], ``block2`` [B,17,17,768], ``block3`` [B,1,1,2048]
        (sizes for the 299 input)."""
        out = {"block0_input": self.prepare(images)}
        x = out["block0_input"]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        out["block0"] = x = _max_pool(x, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        out["block1"] = x = _max_pool(x, 2)
        for m in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = m(x)
        out["block2"] = x
        for m in (self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = m(x)
        out["block3"] = jnp.mean(x, axis=(1, 2), keepdims=True)
        return out

    def __call__(self, images: jax.Array) -> jax.Array:
        """images [B,H,W,3] RGB in [0,1] -> pool features [B,2048] (the FID activations)."""
        return self.blocks(images)["block3"][:, 0, 0, :]
