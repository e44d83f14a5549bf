"""StyleGAN2 layers and flow warping (gohd_jax/nn) against independent numpy references.

The references follow the official PyTorch definitions directly: upfirdn2d as zero insertion +
padding + a 2-D scipy convolution with the outer-product kernel; transposed convolution as a
scatter of kernel-weighted inputs; the modulated conv with per-sample modulated/demodulated
weights (the official grouped form); grid_sample as a sum of tent weights over the zero-padded
image. Small shapes, float64 where the comparison is exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import signal

from gohd_jax.nn import stylegan as S
from gohd_jax.nn import warp as W

K = np.array([1.0, 3.0, 3.0, 1.0])


def k2d(factor: int = 1) -> np.ndarray:
    k = np.outer(K, K)
    return k / k.sum() * (factor ** 2 if factor > 1 else 1)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ------------------------------------------------------------------------ numpy references

def np_upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """upfirdn2d_native on NHWC with a 2-D kernel (scipy convolution = torch flip + conv2d)."""
    b, h, w, c = x.shape
    u = np.zeros((b, h * up, w * up, c))
    u[:, ::up, ::up] = x
    p = np.pad(u, ((0, 0), pad, pad, (0, 0)))
    out = np.stack([np.stack([signal.convolve2d(p[i, :, :, j], kernel, mode="valid")
                              for j in range(c)], -1) for i in range(b)])
    return out[:, ::down, ::down]


def np_conv2d(x, w, stride=1, pad=0):
    """Cross-correlation, x [B,H,W,I], w [kh,kw,I,O]."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride]
            out += patch @ w[i, j]
    return out


def np_conv_transpose2d(x, w, stride=2):
    """torch conv_transpose2d(padding=0) as a scatter: out[s·y + h, s·x + v] += x[y, x]·w[h, v]."""
    b, h, wd, _ = x.shape
    kh, kw, _, o = w.shape
    out = np.zeros((b, (h - 1) * stride + kh, (wd - 1) * stride + kw, o))
    for i in range(kh):
        for j in range(kw):
            ys, xs = slice(i, i + (h - 1) * stride + 1, stride), slice(j, j + (wd - 1) * stride + 1,
                                                                     stride)
            out[:, ys, xs] += x @ w[i, j]
    return out


def np_lrelu(x, slope=0.2):
    return np.where(x >= 0, x, slope * x)


def np_modconv(x, weight, mod_w, mod_b, style, demodulate=True, upsample=False,
               downsample=False):
    """The official ModulatedConv2d, one sample at a time with its own modulated kernel."""
    k, _, cin, cout = weight.shape
    s = style @ mod_w / math.sqrt(style.shape[1]) + mod_b  # EqualLinear, bias init 1
    outs = []
    for b in range(x.shape[0]):
        wb = weight / math.sqrt(cin * k * k) * s[b][None, None, :, None]
        if demodulate:
            wb = wb / np.sqrt((wb ** 2).sum(axis=(0, 1, 2)) + 1e-8)
        xb = x[b:b + 1]
        if upsample:
            p = (4 - 2) - (k - 1)
            ob = np_upfirdn2d(np_conv_transpose2d(xb, wb, 2), k2d(2),
                              pad=((p + 1) // 2 + 1, p // 2 + 1))
        elif downsample:
            p = (4 - 2) + (k - 1)
            ob = np_conv2d(np_upfirdn2d(xb, k2d(), pad=((p + 1) // 2, p // 2)), wb, stride=2)
        else:
            ob = np_conv2d(xb, wb, pad=k // 2)
        outs.append(ob)
    return np.concatenate(outs)


def np_grid_sample(feat, grid):
    """Bilinear grid_sample, zeros padding, align_corners=False, via tent weights."""
    b, h, w, c = feat.shape
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    out = np.zeros(grid.shape[:3] + (c,))
    for yy in range(h):
        wy = np.maximum(0, 1 - np.abs(iy - yy))
        for xx in range(w):
            wt = wy * np.maximum(0, 1 - np.abs(ix - xx))
            out += wt[..., None] * feat[:, yy, xx][:, None, None, :]
    return out


def params(module):
    return {".".join(map(str, k)): np.asarray(v[...], np.float64)
            for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def randomize(module, seed=0, scale=0.1):
    """Non-trivial values everywhere (zero-initialised biases included)."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        var.value = var.value + jnp.asarray(scale * rng.standard_normal(var.shape), var.dtype)
    return module


# ----------------------------------------------------------------------------------- tests

def test_fused_leaky_relu():
    x = np.linspace(-2, 2, 9).reshape(1, 1, 9, 1)
    b = np.array([0.3])
    np.testing.assert_allclose(S.fused_leaky_relu(jnp.asarray(x), jnp.asarray(b)),
                               np_lrelu(x + b) * math.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize("up,down,pad,factor", [
    (1, 1, (1, 1), 1),  # blur after the transposed conv (x4 kernel)
    (1, 1, (2, 2), 1),  # blur before a 3x3 stride-2 conv
    (1, 2, (1, 1), 1),  # Downsample-style
    (2, 1, (2, 1), 2),  # Upsample of ToRGB / ToFlow skips
])
def test_upfirdn2d_matches_direct_2d_convolution(up, down, pad, factor):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3))
    with jax.enable_x64(True):
        got = S.upfirdn2d(jnp.asarray(x), K, up=up, down=down, pad=pad,
                          gain=factor ** 2 if factor > 1 else 1)
        assert rel(got, np_upfirdn2d(x, k2d(factor), up, down, pad)) < 1e-13


@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("dtype,method", [("float32", "dilated"), ("float32", "phases"), ("float64", "phases"),
                                          ("float64", "dilated")])
def test_conv_transpose2d_matches_scatter(k, dtype, method):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 3))
    w = rng.standard_normal((k, k, 3, 2))
    with jax.enable_x64(True):
        got = S.conv_transpose2d(jnp.asarray(x, dtype), jnp.asarray(w, dtype), 2, method=method)
        assert got.shape == (2, 4 * 2 + k, 3 * 2 + k, 2) and got.dtype == dtype
        assert rel(got, np_conv_transpose2d(x, w, 2)) < (1e-13 if dtype == "float64" else 1e-6)
    with pytest.raises(ValueError, match="method"):
        S.conv_transpose2d(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), 2, method="fft")


def test_equal_conv_and_linear_scale_at_runtime():
    rngs = nnx.Rngs(0)
    conv = randomize(S.EqualConv2d(3, 4, 3, padding=1, rngs=rngs))
    x = np.random.default_rng(2).standard_normal((2, 6, 6, 3)).astype(np.float32)
    p = params(conv)
    ref = np_conv2d(x, p["weight"] / math.sqrt(27), pad=1) + p["bias"]
    assert rel(conv(jnp.asarray(x)), ref) < 1e-5
    # raw storage: weights are N(0, 1) at init, not pre-scaled
    fresh = S.EqualConv2d(64, 64, 3, rngs=rngs)
    assert 0.9 < float(jnp.std(fresh.weight[...])) < 1.1

    lin = randomize(S.EqualLinear(5, 3, lr_mul=0.01, bias_init=1.0, rngs=rngs))
    p = params(lin)
    v = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    ref = v @ (p["weight"] * 0.01 / math.sqrt(5)) + p["bias"] * 0.01
    assert rel(lin(jnp.asarray(v)), ref) < 1e-5
    act = randomize(S.EqualLinear(5, 3, activation="fused_lrelu", rngs=rngs))
    p = params(act)
    ref = np_lrelu(v @ (p["weight"] / math.sqrt(5)) + p["bias"]) * math.sqrt(2)
    assert rel(act(jnp.asarray(v)), ref) < 1e-5


@pytest.mark.parametrize("mode", ["plain", "upsample", "downsample", "no-demod", "1x1"])
def test_modulated_conv_matches_per_sample_weights(mode):
    k = 1 if mode == "1x1" else 3
    with jax.enable_x64(True):
        m = S.ModulatedConv2d(
            4, 5, k, 6, demodulate=mode != "no-demod", upsample=mode == "upsample",
            downsample=mode == "downsample", rngs=nnx.Rngs(1), param_dtype=jnp.float64)
        randomize(m)
        p = params(m)
        rng = np.random.default_rng(4)
        x = rng.standard_normal((3, 6, 6, 4))
        style = rng.standard_normal((3, 6))
        got = m(jnp.asarray(x), jnp.asarray(style))
        ref = np_modconv(x, p["weight"], p["modulation.weight"], p["modulation.bias"], style,
                         demodulate=mode != "no-demod", upsample=mode == "upsample",
                         downsample=mode == "downsample")
        assert got.shape == ref.shape
        assert rel(got, ref) < 1e-12


def test_conv_layer_and_resblock():
    with jax.enable_x64(True):
        rb = randomize(S.ResBlock(3, 4, rngs=nnx.Rngs(2), param_dtype=jnp.float64))
        p = params(rb)
        x = np.random.default_rng(5).standard_normal((2, 8, 8, 3))
        h = np_lrelu(np_conv2d(x, p["conv1.conv.weight"] / math.sqrt(27), pad=1)
                     + p["conv1.act.bias"]) * math.sqrt(2)
        h = np_upfirdn2d(h, k2d(), pad=(2, 2))
        h = np_lrelu(np_conv2d(h, p["conv2.conv.weight"] / math.sqrt(27), stride=2)
                     + p["conv2.act.bias"]) * math.sqrt(2)
        skip = np_conv2d(np_upfirdn2d(x, k2d(), pad=(1, 1)), p["skip.conv.weight"] / math.sqrt(3),
                         stride=2)
        got = rb(jnp.asarray(x))
        assert got.shape == (2, 4, 4, 4)
        assert rel(got, (h + skip) / math.sqrt(2)) < 1e-12
        assert "skip.conv.bias" not in p and "skip.act.bias" not in p  # no bias, no activation


def test_to_rgb_and_to_flow():
    with jax.enable_x64(True):
        rngs = nnx.Rngs(3)
        rng = np.random.default_rng(6)
        x = rng.standard_normal((2, 8, 8, 4))
        skip = rng.standard_normal((2, 4, 4, 3))
        rgb = randomize(S.ToRGB(4, 3, rngs=rngs, param_dtype=jnp.float64))
        p = params(rgb)
        ref = (np_lrelu(np_conv2d(x, p["conv.conv.weight"] / 2.0) + p["conv.act.bias"])
               * math.sqrt(2) + p["bias"] + np_upfirdn2d(skip, k2d(2), up=2, pad=(2, 1)))
        assert rel(rgb(jnp.asarray(x), jnp.asarray(skip)), ref) < 1e-12

        flow = randomize(S.ToFlow(4, 6, rngs=rngs, param_dtype=jnp.float64))
        p = params(flow)
        style = rng.standard_normal((2, 6))
        feat = rng.standard_normal((2, 8, 8, 5))
        raw = np_modconv(x, p["conv.weight"], p["conv.modulation.weight"],
                         p["conv.modulation.bias"], style, demodulate=False)
        raw = raw + p["bias"] + np_upfirdn2d(skip, k2d(2), up=2, pad=(2, 1))
        lin = np.linspace(-1, 1, 8).astype(np.float32).astype(np.float64)
        grid = np.tanh(raw[..., :2]) + np.stack(np.meshgrid(lin, lin), -1)
        mask = 1 / (1 + np.exp(-raw[..., 2:3]))
        warped, m, r = flow(jnp.asarray(x), jnp.asarray(style), jnp.asarray(feat),
                            jnp.asarray(skip))
        assert rel(r, raw) < 1e-12 and rel(m, mask) < 1e-12
        assert rel(warped, np_grid_sample(feat, grid) * mask) < 1e-12


def test_grid_sample_matches_tent_reference_with_zero_padding():
    rng = np.random.default_rng(7)
    feat = rng.standard_normal((2, 5, 7, 3))
    grid = rng.uniform(-1.4, 1.4, (2, 6, 4, 2))  # includes samples outside the image
    grid[0, 0, 0] = [-1.0, -1.0]  # the corner edge: half a pixel outside the first centre
    with jax.enable_x64(True):
        got = W.grid_sample(jnp.asarray(feat), jnp.asarray(grid))
        assert rel(got, np_grid_sample(feat, grid)) < 1e-13
        # far outside reads zeros
        far = W.grid_sample(jnp.asarray(feat), jnp.full((2, 2, 2, 2), 3.0))
        assert float(jnp.abs(far).max()) == 0.0
        # one shared feature map (batch 1) equals it broadcast explicitly
        shared = W.grid_sample(jnp.asarray(feat[:1]), jnp.asarray(grid))
        explicit = W.grid_sample(jnp.asarray(np.repeat(feat[:1], 2, 0)), jnp.asarray(grid))
        np.testing.assert_array_equal(shared, explicit)


def test_grid_sample_align_corners_false_convention():
    """Pixel centres (2i+1)/W - 1 reproduce the image; the official linspace grid does not."""
    feat = np.random.default_rng(8).standard_normal((1, 6, 6, 2))
    centres = (2 * np.arange(6) + 1) / 6 - 1
    grid = np.stack(np.meshgrid(centres, centres), -1)[None]
    with jax.enable_x64(True):
        np.testing.assert_allclose(W.grid_sample(jnp.asarray(feat), jnp.asarray(grid)), feat,
                                   atol=1e-14)
        ident = W.identity_grid(6, dtype=jnp.float64)[None]
        assert rel(W.grid_sample(jnp.asarray(feat), ident), feat) > 1e-2
        exact = W.identity_grid(6, 5, dtype=jnp.float64, release=False)[None]  # H 6, W 5
        wide = np.random.default_rng(9).standard_normal((1, 6, 5, 2))
        np.testing.assert_allclose(W.grid_sample(jnp.asarray(wide), exact), wide, atol=1e-6)


def test_identity_grid_is_float32_rounded_linspace():
    with jax.enable_x64(True):
        g = np.asarray(W.identity_grid(7, dtype=jnp.float64))
    lin32 = np.linspace(-1, 1, 7).astype(np.float32)
    assert g.dtype == np.float64 and g.shape == (7, 7, 2)
    np.testing.assert_array_equal(g[..., 0], np.tile(lin32, (7, 1)))  # x varies along W
    np.testing.assert_array_equal(g[..., 1], np.tile(lin32[:, None], (1, 7)))
    assert not np.array_equal(g[0, :, 0], np.linspace(-1, 1, 7))  # rounding kept


def test_grid_sample_gradients():
    rng = np.random.default_rng(9)
    feat = jnp.asarray(rng.standard_normal((1, 5, 5, 2)))
    grid = jnp.asarray(rng.uniform(-0.8, 0.8, (1, 3, 3, 2)))
    with jax.enable_x64(True):
        feat, grid = feat.astype(jnp.float64), grid.astype(jnp.float64)

        def f(g):
            return jnp.sum(W.grid_sample(feat, g) ** 2)

        g = jax.grad(f)(grid)
        eps = 1e-6
        d = jnp.zeros_like(grid).at[0, 1, 2, 0].set(eps)
        fd = (f(grid + d) - f(grid - d)) / (2 * eps)
        np.testing.assert_allclose(g[0, 1, 2, 0], fd, rtol=1e-6)


def test_layers_jit_and_vmap():
    conv = S.StyledConv(4, 4, 3, 6, upsample=True, rngs=nnx.Rngs(4))
    gd, st = nnx.split(conv)
    x = jnp.ones((3, 4, 4, 4))
    s = jnp.ones((3, 6))
    f = jax.jit(lambda st, x, s: nnx.merge(gd, st)(x, s))
    batched = f(st, x, s)
    per = jax.vmap(lambda xi, si: nnx.merge(gd, st)(xi[None], si[None])[0])(x, s)
    assert batched.shape == (3, 8, 8, 4)
    np.testing.assert_allclose(batched, per, rtol=1e-5, atol=1e-6)
