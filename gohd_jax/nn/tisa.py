"""TISA attention transformer of GoHD's pose/gaze denoiser (LDA ``'tisa'`` residual function).

Re-implementation (Flax NNX, channels-last ``[B, T, C]``) of the official
``networks/models/transformer/tisa_transformer.py`` (TisaTransformer, AttnBlock, GatedAttn,
ConvLayer, FeedForward) and ``tisa_v2.py`` (TisaV2 translation-invariant position scores).

Behaviour of the official release that is reproduced on purpose:

* GoHD passes ``use_preln='false'`` and ``bias='false'`` as *strings*; both are truthy, so every
  block is pre-LN, ``x += Attn(norm_2(x)); x += FF(norm_1(x))``, and the FF layers have biases.
  ``AttnBlock(pre_ln=False)`` gives the post-LN variant (LDA's YAML) for completeness.
* ``GatedAttn``: one bias-free Linear(d -> 3d) split as ``[k, v | q]``; scores / sqrt(d_head) + TISA
  bias; softmax; the output is ``a * sigmoid(b)`` of a gate Linear(d -> 2d); no other projection.
* TISA bias per head h, with delta = query index - key index:
  ``log(sum_k |A_k| sigmoid(sign(A_k) (delta - o_k) / s_k) + 1e-8 + |b_h|) - |delta| slope_h``.
  ``slopes`` are fixed constants (a non-trainable ``TisaSlopes`` variable).
* FF by dilation: 0 -> Linear(d, d_ff) ReLU Linear(d_ff, d); otherwise Conv1d(k=3, that dilation,
  padding = dilation) ReLU Conv1d(k=3, same).
* LayerNorm is torch's ``nn.LayerNorm`` (eps 1e-5, biased variance). Dropout is omitted (the
  official model runs in eval mode for inference).

Precision (``gohd_jax.nn.policy``): projections, convolutions and the attention products run in
the input's (compute) dtype; the attention scores are accumulated in float32, the TISA position
bias and the softmax are float32, and LayerNorm statistics are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gohd_jax.nn.policy import DEFAULT

__all__ = ["TisaSlopes", "Conv1d", "LayerNorm", "tisa_slopes", "TisaBias", "GatedAttention",
           "LinearFeedForward", "ConvFeedForward", "AttnBlock", "TisaTransformer"]


class TisaSlopes(nnx.Variable):
    """Fixed (non-trainable) TISA decay slopes; torch keeps them as requires_grad=False params."""


class Conv1d(nnx.Module):
    """Channels-last 1-D convolution; kernel ``[k, in, out]`` (torch ``(out, in, k)`` transposed).
    Computes in x's dtype."""

    policy = DEFAULT

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 1, *,
                 dilation: int = 1, padding: int = 0, use_bias: bool = True,
                 kernel_init=None, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.kernel_size, self.dilation, self.padding = kernel_size, dilation, padding
        if kernel_init is None:
            kernel_init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
        self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, in_features, out_features),
                                            param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None

    def __call__(self, x):
        w = self.kernel[...].astype(x.dtype)
        prec = self.policy.dot_precision
        if self.kernel_size == 1:
            y = jnp.matmul(x, w[0], precision=prec)
        else:
            y = jax.lax.conv_general_dilated(
                x, w, window_strides=(1,), padding=[(self.padding, self.padding)],
                rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"),
                precision=prec)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class LayerNorm(nnx.Module):
    """torch ``nn.LayerNorm``: (x - mean) / sqrt(var + eps) * weight + bias, biased variance.
    Statistics and the affine map in float32 (float64 in parity runs); returns x's dtype."""

    policy = DEFAULT

    def __init__(self, features: int, eps: float = 1e-5, *, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))

    def __call__(self, x):
        x32 = self.policy.f32(x)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        xc = x32 - mean
        var = jnp.mean(xc * xc, axis=-1, keepdims=True)
        y = xc * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def tisa_slopes(num_heads: int, min_field_view: float = 5.0, max_field_view: float = 75.0,
                p_eps: float = 1e-8):
    """The official fixed slopes: geometric from -ln(p_eps)/(min/2) down to -ln(p_eps)/(max/2)."""
    first = -math.log(p_eps) / (min_field_view / 2)
    last = -math.log(p_eps) / (max_field_view / 2)
    expo = jnp.arange(num_heads, dtype=jnp.float32) / max(num_heads - 1, 1)
    return (first * (last / first) ** expo).astype(jnp.float32)


class TisaBias(nnx.Module):
    """TisaV2 position scores. Parameters are stored ``[K, H]`` (torch ``[1, K, H, 1, 1]``)."""

    def __init__(self, num_heads: int, num_kernels: int = 21, *, max_field_view: float = 75.0,
                 min_field_view: float = 5.0, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.num_heads, self.num_kernels = num_heads, num_kernels
        self.eps = 1e-8
        self.offsets = nnx.Param(15.0 * jax.random.normal(rngs.params(), (num_kernels, num_heads),
                                                          param_dtype))
        self.amplitudes = nnx.Param(0.01 * jax.random.normal(rngs.params(),
                                                             (num_kernels, num_heads), param_dtype))
        self.sharpness = nnx.Param(jnp.full((num_kernels, num_heads), 5.0, param_dtype))
        self.bias = nnx.Param(jnp.ones((num_heads,), param_dtype))
        self.slopes = TisaSlopes(tisa_slopes(num_heads, min_field_view, max_field_view))

    def __call__(self, seq_len: int):
        """Returns the bias ``[H, T, T]``; entry [h, i, j] uses delta = i - j."""
        idx = jnp.arange(seq_len, dtype=jnp.float32)
        delta = idx[:, None] - idx[None, :]                                      # [T, T]
        slopes = jax.lax.stop_gradient(self.slopes[...])
        decay = -jnp.abs(delta)[None] * slopes[:, None, None]                    # [H, T, T]
        off = self.offsets[...][:, :, None, None]
        amp = self.amplitudes[...][:, :, None, None]
        sharp = self.sharpness[...][:, :, None, None]
        p = (delta[None, None] - off) / sharp                                    # [K, H, T, T]
        p = jnp.abs(amp) * jax.nn.sigmoid(jnp.sign(amp) * p)
        p = jnp.sum(p, axis=0)                                                   # [H, T, T]
        p = p + (self.eps + jnp.abs(self.bias[...]))[:, None, None]
        return jnp.log(p) + decay


class GatedAttention(nnx.Module):
    """GatedAttn: fused bias-free [k, v | q] projection, TISA-biased softmax attention, a*sigmoid(b)."""

    policy = DEFAULT

    def __init__(self, d_model: int, num_heads: int, *, num_kernels: int = 21,
                 max_field_view: float = 75.0, min_field_view: float = 5.0, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        assert d_model % num_heads == 0, (d_model, num_heads)
        self.d_model, self.num_heads = d_model, num_heads
        self.in_proj = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs,
                                  param_dtype=param_dtype)
        self.gate = nnx.Linear(d_model, 2 * d_model, rngs=rngs, param_dtype=param_dtype)
        self.position_scorer = TisaBias(num_heads, num_kernels, max_field_view=max_field_view,
                                        min_field_view=min_field_view, rngs=rngs,
                                        param_dtype=param_dtype)

    def __call__(self, x):
        b, t, c = x.shape
        h, dh = self.num_heads, c // self.num_heads
        proj = self.in_proj(x)
        k, v, q = (proj[..., i * c:(i + 1) * c].reshape(b, t, h, dh) for i in range(3))
        pol = self.policy
        acc = pol.f32(q).dtype  # scores accumulate in float32 (float64 in parity runs)
        w = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=pol.dot_precision,
                       preferred_element_type=acc)
        w = w / jnp.sqrt(jnp.asarray(dh, acc)) + self.position_scorer(t)[None]
        w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", w, v, precision=pol.dot_precision)
        y = self.gate(y.reshape(b, t, c))
        a, g = jnp.split(y, 2, axis=-1)
        return a * jax.nn.sigmoid(g)


class LinearFeedForward(nnx.Module):
    def __init__(self, d_model: int, d_ff: int, *, use_bias: bool = True, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.linear_1 = nnx.Linear(d_model, d_ff, use_bias=use_bias, rngs=rngs,
                                   param_dtype=param_dtype)
        self.linear_2 = nnx.Linear(d_ff, d_model, use_bias=use_bias, rngs=rngs,
                                   param_dtype=param_dtype)

    def __call__(self, x):
        return self.linear_2(jax.nn.relu(self.linear_1(x)))


class ConvFeedForward(nnx.Module):
    def __init__(self, d_model: int, d_ff: int, dilation: int, *, use_bias: bool = True,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.conv_1 = Conv1d(d_model, d_ff, 3, dilation=dilation, padding=dilation,
                             use_bias=use_bias, kernel_init=init, rngs=rngs,
                             param_dtype=param_dtype)
        self.conv_2 = Conv1d(d_ff, d_model, 3, dilation=dilation, padding=dilation,
                             use_bias=use_bias, kernel_init=init, rngs=rngs,
                             param_dtype=param_dtype)

    def __call__(self, x):
        return self.conv_2(jax.nn.relu(self.conv_1(x)))


class AttnBlock(nnx.Module):
    """Pre-LN (official, string-boolean) block: x += Attn(norm_2(x)); x += FF(norm_1(x))."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dilation: int, *,
                 num_kernels: int = 21, seq_len: int = 150, pre_ln: bool = True,
                 ff_bias: bool = True, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.pre_ln = pre_ln
        self.attn = GatedAttention(d_model, num_heads, num_kernels=num_kernels,
                                   max_field_view=seq_len // 2, min_field_view=5, rngs=rngs,
                                   param_dtype=param_dtype)
        if dilation > 0:
            self.ff = ConvFeedForward(d_model, d_ff, dilation, use_bias=ff_bias, rngs=rngs,
                                      param_dtype=param_dtype)
        else:
            self.ff = LinearFeedForward(d_model, d_ff, use_bias=ff_bias, rngs=rngs,
                                        param_dtype=param_dtype)
        self.norm_1 = LayerNorm(d_model, param_dtype=param_dtype)
        self.norm_2 = LayerNorm(d_model, param_dtype=param_dtype)

    def __call__(self, x):
        if self.pre_ln:
            x = x + self.attn(self.norm_2(x))
            return x + self.ff(self.norm_1(x))
        x = self.norm_2(x + self.attn(x))
        return self.norm_1(x + self.ff(x))


class TisaTransformer(nnx.Module):
    """in_proj Linear -> num_blocks AttnBlocks -> out_proj Linear."""

    def __init__(self, in_channels: int, out_channels: int, d_model: int, *, num_blocks: int = 2,
                 num_heads: int = 8, d_ff: int = 1024, dilation: int = 0, num_kernels: int = 21,
                 seq_len: int = 150, pre_ln: bool = True, ff_bias: bool = True, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.in_proj = nnx.Linear(in_channels, d_model, rngs=rngs, param_dtype=param_dtype)
        self.attention_blocks = nnx.List([
            AttnBlock(d_model, num_heads, d_ff, dilation, num_kernels=num_kernels,
                      seq_len=seq_len, pre_ln=pre_ln, ff_bias=ff_bias, rngs=rngs,
                      param_dtype=param_dtype)
            for _ in range(num_blocks)])
        self.out_proj = nnx.Linear(d_model, out_channels, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x):
        x = self.in_proj(x)
        for blk in self.attention_blocks:
            x = blk(x)
        return self.out_proj(x)
