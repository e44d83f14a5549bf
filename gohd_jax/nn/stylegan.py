"""StyleGAN2 building blocks (rosinality flavour, as LIA and GoHD use them), NHWC, Flax NNX.

Every layer is pure ``jnp`` / ``lax`` (jit-able, vmap-able, exportable). Layout: images are
[B, H, W, C]; 2-D kernels are HWIO; linear weights are [in, out].

Equalised learning rate: weights are stored raw (initialised N(0, 1), divided by ``lr_mul`` for
linear layers) and multiplied by ``lr_mul / sqrt(fan_in)`` in the forward pass, so an official
PyTorch state dict loads without rescaling (``gohd_jax.interop.animator_weights``).

FIR filtering (``upfirdn2d``) uses a separable 1-D kernel (the official ``[1, 3, 3, 1]``) and runs
as shifted adds along each axis (several times faster on CPU than a depthwise convolution); the
2-D kernel of the official code is its normalised outer product (times ``factor**2`` when
upsampling), so the two are the same linear map. The upsampling ``ModulatedConv2d`` is, as in the
official code, a stride-2 transposed convolution followed by the blur; ``conv_transpose2d``
computes PyTorch's ``conv_transpose2d(stride=2, padding=0)`` as an input-dilated convolution, and
in float64 (the parity route, where XLA:CPU has no fast dilated kernel) by its output phases.

Float64: every layer follows the dtype of its input and parameters, so a model loaded with
float64 weights and fed float64 inputs (under ``jax.enable_x64``) runs in float64 throughout.

Precision (``gohd_jax.nn.policy``): layers compute in the dtype of their input (the model casts
its input to the policy's compute dtype) with the policy's matmul precision; what must stay
float32 does so explicitly: the modulation styles and demodulation statistics (HIGHEST), the
flow field, sampling grid, mask and warp (``ToFlow``), and the RGB image path (``ToRGB``).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from gohd_jax.nn.policy import DEFAULT, HIGHEST

__all__ = [
    "DEFAULT_BLUR", "fused_leaky_relu", "leaky_relu", "upfirdn2d", "conv2d", "conv_transpose2d",
    "EqualConv2d", "EqualLinear", "FusedLeakyReLU", "Blur", "Upsample", "Conv2d", "ModulatedConv2d",
    "NoiseInjection", "ConstantInput", "StyledConv", "ConvLayer", "ResBlock", "ToRGB", "ToFlow",
    "normal_init", "uniform_init",
]

DEFAULT_BLUR = (1, 3, 3, 1)
SQRT2 = math.sqrt(2.0)
_DN = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------------- functions

def leaky_relu(x: jax.Array, negative_slope: float = 0.2) -> jax.Array:
    """PyTorch's F.leaky_relu (no gain)."""
    return jnp.where(x >= 0, x, x * negative_slope)


def fused_leaky_relu(x: jax.Array, bias: jax.Array, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> jax.Array:
    """leaky_relu(x + bias) * sqrt(2); ``bias`` broadcasts over the last (channel) axis."""
    return leaky_relu(x + bias, negative_slope) * scale


def _shift_slice(x: jax.Array, axis: int, start: int, length: int, step: int = 1) -> jax.Array:
    return lax.slice_in_dim(x, start, start + (length - 1) * step + 1, stride=step, axis=axis)


def _fir1d(x: jax.Array, taps: Sequence[float], axis: int, down: int) -> jax.Array:
    """Valid convolution with ``taps`` along ``axis`` (a true convolution, i.e. F.conv2d with the
    flipped kernel as upfirdn2d_native does), then keep every ``down``-th sample."""
    length = x.shape[axis] - len(taps) + 1
    out = None
    for t, c in enumerate(list(taps)[::-1]):
        if c == 0:
            continue
        term = _shift_slice(x, axis, t, length) * c
        out = term if out is None else out + term
    if out is None:
        out = jnp.zeros_like(_shift_slice(x, axis, 0, length))
    if down > 1:
        out = _shift_slice(out, axis, 0, (length - 1) // down + 1, down)
    return out


def upfirdn2d(x: jax.Array, kernel: Sequence[float] = DEFAULT_BLUR, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> jax.Array:
    """StyleGAN2's upfirdn2d on NHWC with the separable kernel ``outer(k, k) / sum(k)**2 * gain``.

    ``pad = (pad0, pad1)`` is applied to both spatial axes after upsampling; output size per axis:
    ``(n * up + pad0 + pad1 - len(k)) // down + 1``.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 1 or k.size == 0:
        raise ValueError(f"upfirdn2d takes a 1-D (separable) kernel, got shape {k.shape}")
    taps = [float(v) for v in k / k.sum() * math.sqrt(gain)]
    # Zero insertion (up - 1 zeros after every sample) and the (possibly negative) padding of
    # both spatial axes in one lax.pad: interior padding inserts the zeros between samples.
    edge = (pad[0], pad[1] + up - 1, up - 1)
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), edge, edge, (0, 0, 0)])
    return _fir1d(_fir1d(x, taps, 1, down), taps, 2, down)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int | tuple = 0,
           dilation: int = 1, *, precision=None) -> jax.Array:
    """Cross-correlation like F.conv2d: x [B,H,W,I], w [kh,kw,I,O]; symmetric int padding.
    Computes in x's dtype (w is cast to it)."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(x, w.astype(x.dtype), (stride, stride), padding,
                                    rhs_dilation=(dilation, dilation), dimension_numbers=_DN,
                                    precision=precision)


def conv_transpose2d(x: jax.Array, w: jax.Array, stride: int = 2, *, method: str = "auto",
                     platform: str | None = None, precision=None) -> jax.Array:
    """PyTorch ``F.conv_transpose2d(x, W, stride=stride, padding=0)`` in NHWC.

    ``w`` is HWIO with ``w[h, w, i, o] = W[i, o, h, w]`` (what ModulatedConv2d stores: the torch
    weight [1, O, I, k, k] transposed to [k, k, I, O]). Output size per axis: (n - 1)·s + k.
    out[s·m + p] = Σ_j x[m - j] · w[p + s·j]. ``method``: "dilated" = one correlation of the
    zero-dilated input with the flipped kernel; "phases" = one ordinary convolution per output
    phase p, interleaved; "auto" = phases for a CPU program and for float64, dilated elsewhere.
    ``platform`` is the backend the program is compiled for (``Policy.target``; default the
    host's): a TPU or GPU program compiled on a CPU machine must get the dilated form. On XLA:CPU
    the dilated form's weight gradient takes a slow generic path (50-100x its forward: 188 ms vs
    2.5 ms at [8,32,32,64] -> 32 channels, 1 core), and float64 dilated convs are slow too.
    """
    if method not in ("auto", "dilated", "phases"):
        raise ValueError(f"method must be auto, dilated or phases, got {method!r}")
    b, h, wd, _ = x.shape
    kh, kw, _, cout = w.shape
    s = stride
    out_h, out_w = (h - 1) * s + kh, (wd - 1) * s + kw
    if method == "auto":
        target = platform or jax.default_backend()
        method = "phases" if x.dtype == jnp.float64 or target == "cpu" else "dilated"
    if method == "dilated":
        # Dilated input, full padding, flipped kernel: one op (fast to compile, cuDNN/oneDNN).
        return lax.conv_general_dilated(x, w[::-1, ::-1].astype(x.dtype), (1, 1),
                                        ((kh - 1, kh - 1), (kw - 1, kw - 1)),
                                        lhs_dilation=(s, s), dimension_numbers=_DN,
                                        precision=precision)
    m_h, m_w = -(-out_h // s), -(-out_w // s)
    rows = []
    for py in range(s):
        cols = []
        for px in range(s):
            sub = w[py::s, px::s]
            jy, jx = sub.shape[:2]
            if jy == 0 or jx == 0:
                ph = jnp.zeros((b, m_h, m_w, cout), x.dtype)
            else:
                xp = jnp.pad(x, ((0, 0), (jy - 1, jy - 1), (jx - 1, jx - 1), (0, 0)))
                if x.dtype == jnp.float64:
                    # XLA:CPU runs float64 convs whose padding grows the image on a slow generic
                    # path (~100x); the barrier keeps XLA from folding the pad into the conv.
                    xp = lax.optimization_barrier(xp)
                ph = conv2d(xp, sub[::-1, ::-1], precision=precision)
                ph = jnp.pad(ph, ((0, 0), (0, m_h - ph.shape[1]), (0, m_w - ph.shape[2]), (0, 0)))
            cols.append(ph)
        rows.append(jnp.stack(cols, axis=3))  # [B, m_h, m_w, s(px), O]
    out = jnp.stack(rows, axis=2)  # [B, m_h, s(py), m_w, s(px), O]
    out = out.reshape(b, m_h * s, m_w * s, cout)
    return out[:, :out_h, :out_w]


def _bucket(shape) -> tuple[int, int]:
    n = int(np.prod(shape, dtype=np.int64))
    return n, 1 << max(n - 1, 0).bit_length()


def normal_init(rngs: nnx.Rngs, shape, dtype=jnp.float32) -> jax.Array:
    """N(0, 1) of ``shape`` from ``rngs.params()``.

    Drawn as a 1-D vector whose length is rounded up to a power of two, then sliced: XLA:CPU
    compiles a threefry draw per distinct shape (~0.5 s for a 4-D one), which made building a
    model take tens of seconds; this way a model's draws share a handful of compilations.
    """
    n, size = _bucket(shape)
    return jax.random.normal(rngs.params(), (size,), dtype)[:n].reshape(shape)


def uniform_init(rngs: nnx.Rngs, shape, bound: float, dtype=jnp.float32) -> jax.Array:
    """U(-bound, bound) of ``shape`` (torch's default conv/linear init), drawn like normal_init."""
    n, size = _bucket(shape)
    u = jax.random.uniform(rngs.params(), (size,), dtype, -1.0, 1.0)[:n].reshape(shape)
    return u * bound


_normal = normal_init


def _uniform(rngs: nnx.Rngs, shape, bound: float, dtype) -> jax.Array:
    return uniform_init(rngs, shape, bound, dtype)


# ------------------------------------------------------------------------------------- modules

class EqualConv2d(nnx.Module):
    """Equal-lr conv: weight [k,k,I,O] ~ N(0,1), scaled by 1/sqrt(I·k²) in the forward pass."""

    policy = DEFAULT

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, use_bias: bool = True, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.stride, self.padding = stride, padding
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nnx.Param(_normal(rngs, (kernel_size, kernel_size, in_channels, out_channels),
                                        param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_channels,), param_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = conv2d(x, self.weight[...] * self.scale, self.stride, self.padding,
                     precision=self.policy.dot_precision)
        if self.bias is not None:
            out = out + self.bias[...].astype(out.dtype)
        return out


class EqualLinear(nnx.Module):
    """Equal-lr linear: weight [in, out] ~ N(0,1)/lr_mul, times lr_mul/sqrt(in) when applied.

    ``activation='fused_lrelu'`` applies fused_leaky_relu with the (lr_mul-scaled) bias.
    Computes in x's dtype.
    """

    policy = DEFAULT

    def __init__(self, in_dim: int, out_dim: int, *, use_bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str | None = None, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"EqualLinear activation must be None or 'fused_lrelu', got "
                             f"{activation!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.lr_mul, self.activation = lr_mul, activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.weight = nnx.Param(_normal(rngs, (in_dim, out_dim), param_dtype) / lr_mul)
        self.bias = (nnx.Param(jnp.full((out_dim,), bias_init, param_dtype)) if use_bias
                     else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jnp.matmul(x, (self.weight[...] * self.scale).astype(x.dtype),
                         precision=self.policy.dot_precision)
        bias = None if self.bias is None else (self.bias[...] * self.lr_mul).astype(out.dtype)
        if self.activation:
            return fused_leaky_relu(out, 0.0 if bias is None else bias)
        return out if bias is None else out + bias


class FusedLeakyReLU(nnx.Module):
    """leaky_relu(x + b, 0.2)·sqrt(2), with a per-channel bias (torch shape [1,C,1,1], here [C])."""

    def __init__(self, channels: int, *, param_dtype=jnp.float32):
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return fused_leaky_relu(x, self.bias[...].astype(x.dtype))


class Blur(nnx.Module):
    """FIR filter with the normalised outer-product kernel (×factor² when it follows upsampling)."""

    def __init__(self, kernel: Sequence[float] = DEFAULT_BLUR, pad: tuple[int, int] = (0, 0),
                 upsample_factor: int = 1):
        self.kernel = tuple(float(k) for k in kernel)
        self.pad = tuple(int(p) for p in pad)
        self.gain = float(upsample_factor ** 2) if upsample_factor > 1 else 1.0

    def __call__(self, x: jax.Array) -> jax.Array:
        return upfirdn2d(x, self.kernel, pad=self.pad, gain=self.gain)


class Upsample(nnx.Module):
    """×2 upsampling by upfirdn2d (zero insertion, kernel ×4, pad (2, 1)) as in ToRGB / ToFlow."""

    def __init__(self, kernel: Sequence[float] = DEFAULT_BLUR, factor: int = 2):
        self.kernel = tuple(float(k) for k in kernel)
        self.factor = factor
        p = len(self.kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad, gain=float(self.factor ** 2))


class Conv2d(nnx.Module):
    """A plain (not equal-lr) conv with bias, initialised like torch.nn.Conv2d."""

    policy = DEFAULT

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
                 use_bias: bool = True, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.padding = padding
        bound = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nnx.Param(_uniform(rngs, (kernel_size, kernel_size, in_channels,
                                                out_channels), bound, param_dtype))
        self.bias = (nnx.Param(_uniform(rngs, (out_channels,), bound, param_dtype)) if use_bias
                     else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = conv2d(x, self.weight[...], padding=self.padding, precision=self.policy.dot_precision)
        return out if self.bias is None else out + self.bias[...].astype(out.dtype)


class ModulatedConv2d(nnx.Module):
    """StyleGAN2 modulated conv. weight [k,k,I,O] (torch [1,O,I,k,k]); style -> EqualLinear
    (bias init 1) -> per-input-channel scales s; effective weight scale·w·s, demodulated by
    rsqrt(Σ_{i,kh,kw} (scale·w·s)² + 1e-8).

    Computed as conv(x·s, scale·w)·d, the same linear map as the official per-sample grouped
    convolution, batched over samples with one shared kernel. Upsampling: stride-2 transposed
    conv, then Blur(pad ((p+1)//2+1, p//2+1), kernel ×4) with p = len(k) - 2 - (k - 1);
    downsampling: Blur(pad ((p+1)//2, p//2)), p = len(k) - 2 + (k - 1), then a stride-2 conv.

    Precision: the styles s and the demodulation d are float32 (d's sum with HIGHEST); the
    convolution runs in x's dtype.
    """

    policy = DEFAULT

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, *,
                 demodulate: bool = True, upsample: bool = False, downsample: bool = False,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        if upsample and downsample:
            raise ValueError("ModulatedConv2d: upsample and downsample are exclusive")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.demodulate, self.upsample, self.downsample = demodulate, upsample, downsample
        self.eps = 1e-8
        factor = 2
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor)
        elif downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
        else:
            self.blur = None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nnx.Param(_normal(rngs, (kernel_size, kernel_size, in_channels, out_channels),
                                        param_dtype))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0, rngs=rngs,
                                      param_dtype=param_dtype)

    def __call__(self, x: jax.Array, style: jax.Array) -> jax.Array:
        pol = self.policy
        s32 = self.modulation(pol.f32(style))  # [B, I], float32 (float64 in parity)
        w32 = self.weight[...] * self.scale  # [k, k, I, O]
        w = w32.astype(x.dtype)
        x = x * s32.astype(x.dtype)[:, None, None, :]
        prec = pol.dot_precision
        if self.upsample:
            out = conv_transpose2d(x, w, stride=2, platform=pol.target, precision=prec)
        elif self.downsample:
            out = conv2d(self.blur(x), w, stride=2, precision=prec)
        else:
            out = conv2d(x, w, padding=self.padding, precision=prec)
        if self.demodulate:
            w2 = jnp.sum(w32.astype(s32.dtype) ** 2, axis=(0, 1))  # [I, O]
            d = lax.rsqrt(jnp.matmul(s32 * s32, w2, precision=HIGHEST) + self.eps)  # [B, O]
            out = out * d.astype(out.dtype)[:, None, None, :]
        if self.upsample:
            out = self.blur(out)
        return out


class NoiseInjection(nnx.Module):
    """image + weight·noise; a no-op when noise is None (as at GoHD inference). weight: [1]."""

    def __init__(self, *, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.zeros((1,), param_dtype))

    def __call__(self, x: jax.Array, noise: jax.Array | None = None) -> jax.Array:
        if noise is None:
            return x
        return x + (self.weight[...] * noise).astype(x.dtype)


class ConstantInput(nnx.Module):
    """Learned constant [1, size, size, C] (torch [1, C, size, size]), repeated over the batch."""

    def __init__(self, channels: int, size: int = 4, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input = nnx.Param(_normal(rngs, (1, size, size, channels), param_dtype))

    def __call__(self, batch: int, dtype=None) -> jax.Array:
        c = self.input[...]
        c = c if dtype is None else c.astype(dtype)
        return jnp.broadcast_to(c, (batch,) + c.shape[1:])


class StyledConv(nnx.Module):
    """ModulatedConv2d -> NoiseInjection -> FusedLeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, *,
                 upsample: bool = False, demodulate: bool = True,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim,
                                    upsample=upsample, demodulate=demodulate,
                                    blur_kernel=blur_kernel, rngs=rngs, param_dtype=param_dtype)
        self.noise = NoiseInjection(param_dtype=param_dtype)
        self.activate = FusedLeakyReLU(out_channels, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, style: jax.Array, noise: jax.Array | None = None) -> jax.Array:
        return self.activate(self.noise(self.conv(x, style), noise))


class ConvLayer(nnx.Module):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU | leaky ReLU], as the official ConvLayer.

    With ``downsample`` the blur (pad ((p+1)//2, p//2), p = len(k) - 2 + (k - 1)) precedes a
    stride-2 unpadded conv; otherwise the conv is 'same' padded. The conv has a bias only when
    ``bias and not activate``; with ``activate`` the bias lives in the FusedLeakyReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 downsample: bool = False, blur_kernel: Sequence[float] = DEFAULT_BLUR,
                 bias: bool = True, activate: bool = True, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.downsample = downsample
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
            stride, padding = 2, 0
        else:
            self.blur = None
            stride, padding = 1, kernel_size // 2
        self.conv = EqualConv2d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=padding, use_bias=bias and not activate, rngs=rngs,
                                param_dtype=param_dtype)
        self.activate = activate
        self.act = FusedLeakyReLU(out_channels, param_dtype=param_dtype) if activate and bias \
            else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.blur is not None:
            x = self.blur(x)
        out = self.conv(x)
        if self.act is not None:
            out = self.act(out)
        elif self.activate:
            out = leaky_relu(out, 0.2)  # the official ScaledLeakyReLU has no gain
        return out


class ResBlock(nnx.Module):
    """(conv3x3 -> blurred stride-2 conv3x3) + blurred stride-2 1x1 skip (no bias), / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, *,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        kw = dict(blur_kernel=blur_kernel, rngs=rngs, param_dtype=param_dtype)
        self.conv1 = ConvLayer(in_channels, in_channels, 3, **kw)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, **kw)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, activate=False,
                              bias=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.conv2(self.conv1(x))
        return (out + self.skip(x)) / SQRT2


class ToRGB(nnx.Module):
    """GoHD/LIA ToRGB: a *non-modulated* 1x1 ConvLayer (with its FusedLeakyReLU) + bias
    + the ×2-upsampled previous image. The image (3 channels) is float32 whatever the policy."""

    policy = DEFAULT

    def __init__(self, in_channels: int, out_channels: int = 3, *, upsample: bool = True,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.upsample = Upsample(blur_kernel) if upsample else None
        self.conv = ConvLayer(in_channels, out_channels, 1, blur_kernel=blur_kernel, rngs=rngs,
                              param_dtype=param_dtype)
        self.bias = nnx.Param(jnp.zeros((out_channels,), param_dtype))

    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        out = self.policy.f32(self.conv(x)) + self.bias[...]
        if skip is not None:
            if self.upsample is None:
                raise ValueError("this ToRGB was built with upsample=False; it takes no skip")
            out = out + self.upsample(skip)
        return out


class ToFlow(nnx.Module):
    """Modulated 1x1 conv (no demodulation) C -> 3, + bias, + the ×2-upsampled previous field;
    channels 0-1 -> tanh -> + identity grid = sampling grid, channel 2 -> sigmoid = mask.

    Returns ``(warped, mask, raw)``: warped = grid_sample(feat, grid)·mask [B,H,W,C_feat],
    mask [B,H,W,1], raw [B,H,W,3] (the pre-activation field the next scale upsamples).
    ``release_grid``: the official linspace base grid (a sub-pixel zoom, ``nn.warp``); False for
    the exact identity.

    Precision: the field (its 1x1 conv included: C -> 3 channels, cheap), grid, mask and warp are
    float32 whatever the policy (the warp turns the field's rounding into pixel offsets scaled by
    W/2); ``warped`` is returned in the compute dtype of ``x``.
    """

    policy = DEFAULT

    def __init__(self, in_channels: int, style_dim: int, *, upsample: bool = True,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, release_grid: bool = True,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.release_grid = bool(release_grid)
        self.upsample = Upsample(blur_kernel) if upsample else None
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False, rngs=rngs,
                                    param_dtype=param_dtype)
        self.bias = nnx.Param(jnp.zeros((3,), param_dtype))

    def __call__(self, x: jax.Array, style: jax.Array, feat: jax.Array,
                 skip: jax.Array | None = None):
        from gohd_jax.nn.warp import identity_grid, grid_sample

        f32 = self.policy.f32
        raw = self.conv(f32(x), style) + self.bias[...].astype(f32(x).dtype)  # a float32 conv
        if skip is not None:
            if self.upsample is None:
                raise ValueError("this ToFlow was built with upsample=False; it takes no skip")
            raw = raw + self.upsample(skip)
        grid = jnp.tanh(raw[..., 0:2]) + identity_grid(x.shape[1], x.shape[2], raw.dtype,
                                                      release=self.release_grid)
        mask = jax.nn.sigmoid(raw[..., 2:3])
        warped = (grid_sample(feat, grid) * mask).astype(x.dtype)
        return warped, mask, raw
