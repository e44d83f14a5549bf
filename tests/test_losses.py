"""Losses (``gohd_jax.train.losses``), the VGG19 feature network and its torchvision converter.

References are independent numpy/scipy implementations of the same formulas.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from flax import nnx

from gohd_jax.interop import vgg19_weights as vw
from gohd_jax.models.vgg19 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19_CONVS,
    VGG19Features,
)
from gohd_jax.train import losses as L
from tests.test_torch_checkpoint import state_dict as torch_state_dict
from tests.test_torch_checkpoint import tensor as torch_tensor
from tests.test_torch_checkpoint import torch_save_legacy, torch_save_zip


def _images(b=2, h=64, w=64, c=3, seed=0):
    """Smooth, structured images in [-1, 1] (sinusoids of random frequency/phase per channel)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((b, h, w, c), np.float32)
    for i in range(b):
        for k in range(c):
            f1, f2, p = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6)
            out[i, :, :, k] = 0.8 * np.sin(2 * np.pi * (f1 * xx + 0.5 * f2 * yy) + p) * np.cos(f2 * yy * 3)
    return out


def _noisy(x, sigma, seed=1):
    return np.clip(x + sigma * np.random.default_rng(seed).standard_normal(x.shape), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def vgg():
    return VGG19Features(rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------------------------
# Identities, monotonicity, reference formulas.


def test_identities():
    x = jnp.asarray(_images())
    assert float(L.l1(x, x)) == 0.0
    assert float(L.gradient_loss(x, x)) == 0.0
    np.testing.assert_allclose(float(L.ms_ssim(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(L.ms_ssim(x, x, scales=1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(L.ms_ssim_loss(x, x)), 0.0, atol=1e-6)
    assert math.isinf(float(L.psnr(x, x)))


def test_monotone_in_noise():
    x = _images()
    sigmas = (0.02, 0.1, 0.3, 0.6)
    rows = {"l1": [], "grad": [], "msssim_loss": [], "psnr": []}
    for s in sigmas:
        xn = jnp.asarray(_noisy(x, s))
        rows["l1"].append(float(L.l1(xn, x)))
        rows["grad"].append(float(L.gradient_loss(xn, x)))
        rows["msssim_loss"].append(float(L.ms_ssim_loss(xn, x)))
        rows["psnr"].append(float(L.psnr(xn, x)))
    for name in ("l1", "grad", "msssim_loss"):
        assert all(a < b for a, b in zip(rows[name], rows[name][1:])), (name, rows[name])
    assert all(a > b for a, b in zip(rows["psnr"], rows["psnr"][1:])), rows["psnr"]


def test_psnr_matches_numpy():
    x, y = _images(seed=2), _noisy(_images(seed=2), 0.1)
    mse = ((x.astype(np.float64) - y) ** 2).reshape(2, -1).mean(1)
    want = 10 * np.log10(4.0 / mse)
    np.testing.assert_allclose(np.asarray(L.psnr(x, y, reduction="none")), want, rtol=1e-5)
    np.testing.assert_allclose(float(L.psnr(x, y)), want.mean(), rtol=1e-5)
    # [0, 1] images with data_range=1 give the same number as the same images in [-1, 1].
    np.testing.assert_allclose(float(L.psnr((x + 1) / 2, (y + 1) / 2, data_range=1.0)), want.mean(), rtol=1e-5)


def test_gan_losses_match_numpy():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((8, 1)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)
    sp = lambda v: np.log1p(np.exp(v.astype(np.float64)))
    np.testing.assert_allclose(float(L.gan_g_loss(fake)), sp(-fake).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(L.gan_d_loss(real, fake)), sp(-real).mean() + sp(fake).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(L.gan_g_loss(jnp.zeros(4))), math.log(2), rtol=1e-6)


def test_gradient_loss_matches_numpy():
    x, y = _images(seed=3), _images(seed=4)
    d = lambda a, ax: np.diff(a.astype(np.float64), axis=ax)
    want = np.abs(d(x, 1) - d(y, 1)).mean() + np.abs(d(x, 2) - d(y, 2)).mean()
    np.testing.assert_allclose(float(L.gradient_loss(x, y)), want, rtol=1e-5)
    energy = np.abs(d(x, 1)).mean() + np.abs(d(x, 2)).mean()
    np.testing.assert_allclose(float(L.gradient_energy(x)), energy, rtol=1e-5)
    noise = np.random.default_rng(5).uniform(-1, 1, x.shape).astype(np.float32)
    blurred = (noise + np.roll(noise, 1, axis=2)) / 2  # a 2-tap blur lowers it
    assert float(L.gradient_energy(blurred)) < 0.9 * float(L.gradient_energy(noise))


def _np_ssim_terms(x, y, win=11, sigma=1.5, data_range=2.0):
    """Straightforward per-image, per-channel SSIM with scipy's 2-D 'valid' convolution."""
    t = np.arange(win) - (win - 1) / 2
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    k = np.outer(g, g)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim = np.zeros(x.shape[::3])
    cs = np.zeros(x.shape[::3])
    for b in range(x.shape[0]):
        for c in range(x.shape[3]):
            a, o = x[b, :, :, c].astype(np.float64), y[b, :, :, c].astype(np.float64)
            f = lambda v: scipy.signal.convolve2d(v, k, mode="valid")
            mx, my = f(a), f(o)
            sxx, syy, sxy = f(a * a) - mx ** 2, f(o * o) - my ** 2, f(a * o) - mx * my
            cs_map = (2 * sxy + c2) / (sxx + syy + c2)
            ssim[b, c] = (((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)) * cs_map).mean()
            cs[b, c] = cs_map.mean()
    return ssim, cs


def test_ssim_at_one_scale_matches_scipy():
    x, y = _images(seed=5), _noisy(_images(seed=5), 0.2)
    ssim, _ = _np_ssim_terms(x, y)
    np.testing.assert_allclose(float(L.ms_ssim(x, y, scales=1)), ssim.mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(L.ms_ssim(x, y, scales=1, reduction="none")),
                               ssim.mean(1), rtol=1e-5)


def test_ms_ssim_multiscale_matches_numpy_and_adapts_to_small_images():
    x, y = _images(seed=6), _noisy(_images(seed=6), 0.15)  # 64 px -> 3 scales (64, 32, 16)
    w = np.asarray(L.MS_SSIM_WEIGHTS[:3], np.float64)
    w /= w.sum()
    value = np.ones((2, 3))
    a, b = x.astype(np.float64), y.astype(np.float64)
    for j in range(3):
        ssim, cs = _np_ssim_terms(a, b)
        value *= (ssim if j == 2 else cs) ** w[j]
        pool = lambda v: 0.25 * (v[:, 0::2, 0::2] + v[:, 1::2, 0::2] + v[:, 0::2, 1::2] + v[:, 1::2, 1::2])
        a, b = pool(a), pool(b)
    np.testing.assert_allclose(float(L.ms_ssim(x, y)), value.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(L.ms_ssim(x, y)), float(L.ms_ssim(x, y, scales=3)), rtol=1e-7)
    with pytest.raises(ValueError, match="need a side of at least"):
        L.ms_ssim(x, y, scales=4)
    tiny = _images(h=8, w=8)  # smaller than the window: window shrinks to 7, one scale
    np.testing.assert_allclose(float(L.ms_ssim(tiny, tiny)), 1.0, atol=1e-6)


def test_antialias_downsample_matches_lia_kernel():
    x = _images(b=1, h=20, w=18, seed=7)
    for scale, size in ((0.5, 5), (0.25, 13), (0.125, 29)):
        # AntiAliasInterpolation2d, literally: 2-D product kernel, zero pad ka, conv, [::s].
        sigma = (1 / scale - 1) / 2
        ks = 2 * round(sigma * 4) + 1
        assert ks == size
        m = np.meshgrid(np.arange(ks), np.arange(ks), indexing="ij")
        k = (np.exp(-(m[0] - (ks - 1) / 2) ** 2 / (2 * sigma ** 2))
             * np.exp(-(m[1] - (ks - 1) / 2) ** 2 / (2 * sigma ** 2)))
        k /= k.sum()
        ka = ks // 2
        s = int(1 / scale)
        want = np.stack([scipy.signal.correlate2d(np.pad(x[0, :, :, c].astype(np.float64), ka), k, mode="valid")
                         for c in range(3)], -1)[::s, ::s]
        got = np.asarray(L.antialias_downsample(jnp.asarray(x), scale))[0]
        assert got.shape == want.shape == (math.ceil(20 * scale), math.ceil(18 * scale), 3)
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert L.antialias_downsample(x, 1) is x


def _fake_features(x):
    """A cheap stand-in with VGG's output geometry: 5 maps, each level 2x2-max-pooled (floor)."""
    outs, h = [], x
    for k in range(5):
        if k:
            hh, ww = h.shape[1] // 2, h.shape[2] // 2
            h = h[:, : 2 * hh, : 2 * ww].reshape(h.shape[0], hh, 2, ww, 2, h.shape[3]).max(axis=(2, 4))
        outs.append(jnp.tanh((k + 1) * h))
    return tuple(outs)


def test_vgg_pyramid_loss_is_the_explicit_sum():
    x, y = _images(b=2, h=32, w=32, seed=8), _images(b=2, h=32, w=32, seed=9)
    @jax.jit
    def explicit_terms(x, y):
        out = []
        for s in (1, 0.5, 0.25, 0.125):
            fx = _fake_features(L.antialias_downsample(x, s))
            fy = _fake_features(L.antialias_downsample(y, s))
            out += [10 * jnp.mean(jnp.abs(a - b)) for a, b in zip(fx, fy) if a.size]
        return out

    terms = explicit_terms(x, y)
    assert len(terms) == 17  # 32 px: level 4 empty at 1/4 and 1/8, level 3 empty at 1/8
    want = float(sum(terms))
    loss = jax.jit(lambda a, b: L.vgg_pyramid_loss(_fake_features, a, b))
    np.testing.assert_allclose(float(loss(x, y)), want, rtol=1e-5)
    one = float(L.vgg_pyramid_loss(_fake_features, x, y, scales=[1.0], weight=[2, 0, 0, 0, 0]))
    np.testing.assert_allclose(one, 2 * float(jnp.mean(jnp.abs(jnp.tanh(x) - jnp.tanh(y)))), rtol=1e-5)
    # The target is a constant (LIA's .detach()): no gradient flows into y.
    gy = jax.jit(jax.grad(loss, argnums=1))(jnp.asarray(x), jnp.asarray(y))
    assert float(jnp.abs(gy).sum()) == 0.0
    assert L.pyramid_scales(4) == (1.0, 0.5, 0.25, 0.125)


def test_vgg_loss_identity_monotonicity_and_finite_gradients_under_jit(vgg):
    """One jitted value-and-grad of the full LIA-style objective (plus the extras), reused."""
    graphdef, state = nnx.split(vgg)
    y = jnp.asarray(_images(b=2, h=32, w=32, seed=10))

    def objective(x, state):
        v = nnx.merge(graphdef, state)
        terms = {"vgg": L.vgg_pyramid_loss(v, x, y), "l1": L.l1(x, y),
                 "ms_ssim": L.ms_ssim_loss(x, y), "grad": L.gradient_loss(x, y),
                 "gan_g": L.gan_g_loss(x.mean(axis=(1, 2, 3))),
                 "gan_d": L.gan_d_loss(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)))}
        return sum(terms.values()), terms

    step = jax.jit(jax.value_and_grad(objective, has_aux=True))
    (_, terms), g = step(y, state)  # exactly at x == y
    # XLA's CPU convolution may round the two halves of the [x; y] batch differently in the last
    # bit, so the jitted VGG term is ~1e-6 rather than exactly 0 (eagerly it is exactly 0).
    assert abs(float(terms["vgg"])) < 1e-4 and float(terms["l1"]) == 0.0
    assert np.all(np.isfinite(np.asarray(g)))
    vgg_values = []
    for sigma in (0.05, 0.2, 0.6):
        (total, terms), g = step(jnp.asarray(_noisy(np.asarray(y), sigma)), state)
        g = np.asarray(g)
        assert g.shape == y.shape and np.all(np.isfinite(g)) and np.abs(g).sum() > 0
        assert np.isfinite(float(total))
        vgg_values.append(float(terms["vgg"]))
    assert 0 < vgg_values[0] < vgg_values[1] < vgg_values[2], vgg_values


# ----------------------------------------------------------------------------------------------
# VGG19 features and the torchvision converter.


def test_vgg_output_shapes_and_frozen_weights(vgg):
    feats = vgg(jnp.zeros((2, 64, 48, 3)))
    assert [f.shape for f in feats] == [(2, 64, 48, 64), (2, 32, 24, 128), (2, 16, 12, 256),
                                        (2, 8, 6, 512), (2, 4, 3, 512)]
    assert len(nnx.state(vgg, nnx.Param)) == 0  # an optimiser with wrt=nnx.Param never touches it
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        vgg(jnp.zeros((2, 3, 16, 16)))


def _torchvision_vgg19_state_dict(seed=0):
    """A synthetic torchvision ``vgg19().state_dict()``: all 16 convs, a (tiny) classifier."""
    rng = np.random.default_rng(seed)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
           512, 512, 512, 512, "M"]
    sd, idx, cin = OrderedDict(), 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = (rng.standard_normal((v, cin, 3, 3))
                                        * math.sqrt(2 / (9 * cin))).astype(np.float32)
        sd[f"features.{idx}.bias"] = (0.1 * rng.standard_normal(v)).astype(np.float32)
        idx, cin = idx + 2, v
    sd["classifier.0.weight"] = np.zeros((4, 8), np.float32)  # real: 4096 x 25088; ignored
    sd["classifier.0.bias"] = np.zeros(4, np.float32)
    return sd


def _np_conv3x3(x, w, b):
    """NHWC x, torch OIHW w: cross-correlation, zero padding 1 (F.conv2d(padding=1))."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[1:3]
    patches = np.stack([xp[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)], axis=3)  # B,H,W,9,I
    return np.einsum("bhwki,oik->bhwo", patches, w.reshape(w.shape[0], w.shape[1], 9)) + b


def _np_vgg(x, sd):
    """torchvision features[0:29] with LIA's normalisation and slice outputs, in float64 numpy."""
    h = (np.clip(x, -1, 1) / 2 + 0.5 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    outs = []
    for name, _, _, idx in VGG19_CONVS:
        if name.endswith("_1") and name != "conv1_1":
            h = h[:, : h.shape[1] // 2 * 2, : h.shape[2] // 2 * 2]
            h = h.reshape(h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2, h.shape[3]).max(axis=(2, 4))
        w, b = sd[f"features.{idx}.weight"].astype(np.float64), sd[f"features.{idx}.bias"].astype(np.float64)
        h = np.maximum(_np_conv3x3(h, w, b), 0)
        if name.endswith("_1"):
            outs.append(h)
    return outs


def test_converter_maps_torchvision_dict_exactly(tmp_path):
    sd = _torchvision_vgg19_state_dict()
    params = vw.convert_torchvision_vgg19(sd)
    assert len(params) == 26
    for name, cin, cout, idx in VGG19_CONVS:
        np.testing.assert_array_equal(params[f"{name}.kernel"],
                                      sd[f"features.{idx}.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(params[f"{name}.bias"], sd[f"features.{idx}.bias"])
    # Through a torch-format file and the command line, then load_vgg19.
    pth = tmp_path / "vgg19-dcbb9e9d.pth"
    pth.write_bytes(torch_save_legacy(torch_state_dict(**{k: torch_tensor(v) for k, v in sd.items()})))
    out = tmp_path / "vgg19.npz"
    assert vw.main([str(pth), "--out", str(out)]) == 0
    model = vw.load_vgg19(out)
    for name, *_ in VGG19_CONVS:
        np.testing.assert_array_equal(model.params_dict()[f"{name}.kernel"], params[f"{name}.kernel"])
    x = _images(b=1, h=16, w=16, seed=11) * 1.2  # some pixels outside [-1, 1]: clamped
    got = model(jnp.asarray(x))
    want = _np_vgg(x.astype(np.float64), sd)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=2e-4 * np.abs(w).max())


def test_converter_accepts_lia_and_nested_checkpoints(tmp_path):
    sd = _torchvision_vgg19_state_dict(seed=1)
    slices = {0: 1, 2: 2, 5: 2, 7: 3, 10: 3, 12: 4, 14: 4, 16: 4, 19: 4, 21: 5, 23: 5, 25: 5, 28: 5}
    lia = OrderedDict()
    for k, v in sd.items():
        idx = int(k.split(".")[1]) if k.startswith("features.") else None
        if idx in slices:
            lia[f"module.vgg.slice{slices[idx]}.{idx}.{k.split('.')[2]}"] = torch_tensor(v)
    pth = tmp_path / "lia.pt"
    pth.write_bytes(torch_save_zip({"vgg": torch_state_dict(**lia), "epoch": 3}))
    out = tmp_path / "sub" / "vgg"
    assert vw.main([str(pth), "--key", "vgg", "--out", str(out)]) == 0
    params = vw.load_vgg19_params(tmp_path / "sub" / "vgg.npz")
    np.testing.assert_array_equal(params["conv5_1.kernel"], sd["features.28.weight"].transpose(2, 3, 1, 0))


def test_converter_and_loader_errors(tmp_path, capsys):
    with pytest.raises(vw.VGG19WeightsError, match="no such VGG19 weights file.*vgg19_weights vgg19-dcbb9e9d.pth"):
        vw.load_vgg19(tmp_path / "vgg19.npz")
    sd = _torchvision_vgg19_state_dict()
    del sd["features.28.weight"]
    with pytest.raises(vw.VGG19WeightsError, match=r"missing features.28 \(conv5_1\)"):
        vw.convert_torchvision_vgg19(sd)
    sd = _torchvision_vgg19_state_dict()
    sd["features.0.weight"] = sd["features.0.weight"][:32]
    with pytest.raises(vw.VGG19WeightsError, match="expected \\(64, 3, 3, 3\\)"):
        vw.convert_torchvision_vgg19(sd)
    bad = tmp_path / "evil.pth"
    bad.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    assert vw.main([str(bad), "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "os.system" in err and "\n" not in err
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(SystemExit) as e:
        vw.main(["--help"])
    assert e.value.code == 0
    assert "vgg19-dcbb9e9d.pth" in capsys.readouterr().out


def test_change_weighted_l1_looks_only_where_target_and_source_differ():
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    target = source.copy()
    target[:, 4:8, 4:8] = -source[:, 4:8, 4:8]  # a "mouth" that moved
    w = L.change_map(jnp.asarray(source), jnp.asarray(target))
    assert w.shape == (2, 16, 16, 1) and float(w[:, :4].max()) == 0.0
    copy = float(L.weighted_l1(jnp.asarray(source), jnp.asarray(target), w))
    np.testing.assert_allclose(copy, np.abs(target - source)[:, 4:8, 4:8].mean(), rtol=0.1)
    # An error outside the changed region costs nothing; getting the region right costs zero.
    fixed = target.copy()
    fixed[:, 10:] += 0.5
    assert float(L.weighted_l1(jnp.asarray(fixed), jnp.asarray(target), w)) == 0.0
    assert float(L.weighted_l1(jnp.asarray(source), jnp.asarray(target), jnp.zeros_like(w))) == 0.0
    grad = jax.grad(lambda t: jnp.sum(L.change_map(jnp.asarray(source), t)))(jnp.asarray(target))
    assert float(jnp.abs(grad).max()) == 0.0  # a constant of the batch


def test_box_mask_weights_exactly_the_mouth_box():
    """``box_mask`` is 1 on the half-open box of each image and 0 elsewhere, so the mouth loss
    (``weighted_l1`` under it) is the L1 of the box's pixels alone."""
    boxes = jnp.asarray([[2, 5, 3, 9], [0, 16, 15, 16]], jnp.int32)
    m = np.asarray(L.box_mask(boxes, 16, 16))
    assert m.shape == (2, 16, 16, 1) and m.dtype == np.float32
    want = np.zeros((2, 16, 16, 1), np.float32)
    want[0, 2:5, 3:9] = 1
    want[1, :, 15:] = 1
    np.testing.assert_array_equal(m, want)
    rng = np.random.default_rng(1)
    x, y = (rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32) for _ in range(2))
    got = float(L.weighted_l1(jnp.asarray(x), jnp.asarray(y), jnp.asarray(m)))
    per = [np.abs(x[0, 2:5, 3:9] - y[0, 2:5, 3:9]).mean(), np.abs(x[1, :, 15:] - y[1, :, 15:]).mean()]
    np.testing.assert_allclose(got, np.mean(per), rtol=1e-5)
