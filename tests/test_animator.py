"""The animator (SemanticAnimator), the plain LIA generator, their official-weight converter and
the discriminator.

Parity: the full float32 + float64 ``gohd-parity`` runs of the ``animator`` and ``lia_generator``
oracles (256², batch 2) take about 25 s each on 2 CPU cores, so both stay in the default suite.
"""

from __future__ import annotations

import dataclasses
import io as _io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gohd_jax.interop import animator_weights as aw
from gohd_jax.interop import oracle_weights as ow
from gohd_jax.interop import parity
from gohd_jax.models.animator import AnimatorConfig, LIAGenerator, SemanticAnimator
from gohd_jax.models.discriminator import Discriminator, DiscriminatorConfig, minibatch_stddev
from tests.conftest import require_shared


def _run_parity(kind: str) -> dict[tuple[str, str], dict]:
    ref = require_shared("reference", kind)
    out, err = _io.StringIO(), _io.StringIO()
    status = parity.check_folder(ref, out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert status == parity.EXIT_OK, err.getvalue() + "\n" + "\n".join(
        f"{d['array']} ({d['ref']}): {d['max_rel']}" for d in lines if not d["pass"])
    return {(d["array"], d["ref"]): d for d in lines}


def _state_dict(kind: str):
    man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
    return ow.make_state_dict(man, ow.manifest_seed(man))


# ------------------------------------------------------------------------------------ parity

def test_animator_parity_float32_and_float64():
    res = _run_parity("animator")
    expected = {"w_s", "alpha", "mapping_out", "latent", "Q", "enc_feat_8"}
    expected |= {f"rgb_{r}" for r in (8, 16, 32, 64, 128, 256)}
    expected |= {f"flow_raw_{r}" for r in (8, 16, 32, 64, 128, 256)}
    assert {a for a, src in res if src == "io.npz"} == expected
    fp64 = {a for a, src in res if src == "io_fp64.npz"}
    assert {"rgb_256", "rgb_128", "Q", "latent"} <= fp64
    # the warped images meet the preferred float64 rule with a wide margin
    assert res[("rgb_256", "io_fp64.npz")]["max_rel"] < 1e-10
    assert res[("rgb_128", "io_fp64.npz")]["max_rel"] < 1e-10
    assert res[("Q", "io.npz")]["max_rel"] < 1e-5  # same QR column signs as torch.qr


def test_lia_generator_parity_float32_and_float64():
    res = _run_parity("lia_generator")
    assert {a for a, src in res if src == "io.npz"} >= {
        "rgb_256", "rgb_8", "w_s", "alpha_drive", "alpha_start", "alpha_source", "Q",
        "rgb_256_relative"}
    for name in ("rgb_256", "rgb_128", "rgb_256_relative"):
        assert res[(name, "io_fp64.npz")]["max_rel"] < 1e-10


def test_release_sft_wiring_is_what_matches_the_oracle():
    ref = require_shared("reference", "animator")
    io = dict(np.load(ref / "io.npz"))
    sd = _state_dict("animator")
    src = jnp.asarray(io["img_source"].transpose(0, 2, 3, 1))
    sem = jnp.asarray(io["semantics"].transpose(0, 2, 1))
    cfg = aw.infer_animator_config(sd)
    assert cfg.release_sft_wiring and cfg == AnimatorConfig.official()
    intended = aw.animator_from_state_dict(sd, dataclasses.replace(cfg, release_sft_wiring=False))
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda m, x, s: m(x, s)["rgb"])(intended, src, sem)
    rgb = {img.shape[1]: np.asarray(img).transpose(0, 3, 1, 2) for img in out}

    def max_rel(r):
        want = io[f"rgb_{r}"]
        return np.abs(rgb[r] - want).max() / np.abs(want).max()

    # The wiring changes the decoder features a SFT level passes on, not that level's image:
    # up to 64² (the first SFT level) both wirings agree; from 128² on only the release wiring
    # reproduces the official output (test_animator_parity_float32_and_float64).
    assert max_rel(32) < 1e-4 and max_rel(64) < 1e-4
    assert max_rel(128) > 1e-2 and max_rel(256) > 1e-2


# ---------------------------------------------------------------------------- tiny models

def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _perturb(model, seed=0, scale=0.05):
    """Zero-initialised biases and noise weights get values, so every path is exercised."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v = np.asarray(var.value)
        var.value = jnp.asarray(v + scale * rng.standard_normal(v.shape), v.dtype)
    return model


# model(source, semantics) under jit, shared by the tests so that models of one structure
# compile once (eager op-by-op dispatch is slow on CPU, and so is compiling).
_FWD = jax.jit(lambda model, x, s: model(x, s))
_RENDER = jax.jit(lambda model, w, f, s: model.render(w, f, s)["rgb"][0])


@pytest.fixture(scope="module")
def tiny():
    cfg = AnimatorConfig.tiny()
    model = _perturb(SemanticAnimator(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(1)
    src = jnp.asarray(rng.uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
    sem = jnp.asarray(0.3 * rng.standard_normal((3, 27, 72)), jnp.float32)
    return cfg, model, src, sem


def test_tiny_config_shapes(tiny):
    cfg, model, src, sem = tiny
    out = _FWD(model, src, sem[:2])
    assert [r.shape for r in out["rgb"]] == [(2, r, r, 3) for r in (64, 32, 16, 8)]
    assert [f.shape for f in out["flow_raw"]] == [(2, r, r, 3) for r in (64, 32, 16, 8)]
    assert out["alpha"].shape == (2, 20) and out["latent"].shape == (2, 128)
    q = jax.jit(lambda m: m.directions())(model)
    np.testing.assert_allclose(q.T @ q, np.eye(20), atol=1e-5)
    w_s, feats = jax.jit(lambda m, x: m.encode_source(x))(model, src)
    assert [f.shape[1:] for f in feats] == [(8, 8, 64), (16, 16, 64), (32, 32, 32), (64, 64, 16)]


def test_source_encoding_is_reused_across_frames(tiny):
    """One encode_source, many semantics windows == end to end per frame."""
    cfg, model, src, sem = tiny
    w_s, feats = jax.jit(lambda m, x: m.encode_source(x))(model, src[:1])
    clip = _RENDER(model, w_s, feats, sem[:2])  # a batch-1 encoding broadcast over 2 frames
    per_frame = jax.vmap(lambda s: _RENDER(model, w_s, feats, s[None])[0])(sem[:2])
    end_to_end = _FWD(model, src[jnp.array([0, 0])], sem[:2])["rgb"][0]  # source per frame
    assert clip.shape == (2, 64, 64, 3)
    # float32 rounding of differently batched convs, amplified by the warps
    assert rel(clip, end_to_end) < 1e-4 and rel(per_frame, end_to_end) < 1e-4
    assert float(jnp.abs(clip[0] - clip[1]).max()) > 1e-4  # the semantics do move the frame


def test_identity_init_starts_by_passing_the_source_through():
    """identity_init: every scale samples the source feature where it is, with mask >= 0.95,
    SFT = identity, and the output starts as the source (the official init displaces samples by
    a random fraction of the image)."""
    model = SemanticAnimator(AnimatorConfig.tiny(identity_init=True), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    src = jnp.asarray(rng.uniform(-1, 1, (1, 64, 64, 3)), jnp.float32)
    sem = jnp.asarray(0.3 * rng.standard_normal((1, 27, 72)), jnp.float32)
    out = _FWD(model, src, sem)
    for raw, mask in zip(out["flow_raw"], out["mask"]):
        np.testing.assert_allclose(raw[..., :2], 0.0, atol=1e-6)  # tanh(0) + grid = identity
        assert float(mask.min()) >= float(jax.nn.sigmoid(3.0)) - 1e-6  # +3 per scale, accumulated
    feat = jnp.asarray(rng.standard_normal((1, 64, 64, 16)), jnp.float32)
    np.testing.assert_allclose(model.dec.sft[0](feat, out["latent"]), feat, atol=1e-6)
    # ... and the image path reproduces the source, up to the release grid's half-pixel zoom,
    # which halves the border pixels: inside the border the error is small
    # (on a smooth image: the blur is what a half-pixel shift does to it)
    yy, xx = np.meshgrid(np.linspace(0, 3, 64), np.linspace(0, 3, 64), indexing="ij")
    smooth = jnp.asarray(np.stack([np.sin(xx), np.cos(yy), np.sin(xx + yy)], -1)[None] * 0.9, jnp.float32)
    rgb = _FWD(model, smooth, sem)["rgb"][0]
    inner = (slice(None), slice(3, -3), slice(3, -3))
    assert float(jnp.abs(rgb - smooth)[inner].max()) < 0.05
    # with the exact identity grid (release_grid=False) the start is the source itself, border
    # included, on any image (up to the mask, 1 - 2e-3 at the corners where the upsampled
    # logits are zero-padded)
    exact = SemanticAnimator(AnimatorConfig.tiny(identity_init=True, release_grid=False), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(_FWD(exact, src, sem)["rgb"][0], src, atol=3e-3)
    assert float(jnp.abs(_FWD(model, src, sem)["rgb"][0] - src).max()) > 0.2  # the release zoom
    official = _FWD(SemanticAnimator(AnimatorConfig.tiny(), rngs=nnx.Rngs(0)), src, sem)
    assert float(jnp.abs(official["flow_raw"][0][..., :2]).mean()) > 0.1
    assert float(jnp.abs(_FWD(SemanticAnimator(AnimatorConfig.tiny(), rngs=nnx.Rngs(0)), smooth, sem)["rgb"][0]
                         - smooth)[inner].mean()) > 0.3


def test_release_sft_wiring_changes_the_output(tiny):
    cfg, model, src, sem = tiny
    # SFT from 32² so that a SFT level passes its features on to the next one (64²).
    cfg = dataclasses.replace(cfg, sft_min_res=32)
    intended = _perturb(SemanticAnimator(cfg, rngs=nnx.Rngs(5)))
    release = aw.animator_from_state_dict(aw.export_state_dict(intended),
                                          dataclasses.replace(cfg, release_sft_wiring=True))
    a = _FWD(intended, src, sem[:2])["rgb"]
    b = _FWD(release, src, sem[:2])["rgb"]
    np.testing.assert_array_equal(a[1], b[1])  # 32²: the first SFT level's own image
    assert float(jnp.abs(a[0] - b[0]).max()) > 1e-3  # 64²: built on the rewired features


def test_tiny_forward_and_grad_under_jit(tiny):
    cfg, model, src, sem = tiny
    gd, params, rest = nnx.split(model, nnx.Param, ...)
    target = jnp.zeros_like(src)

    @jax.jit
    def loss_and_grad(params, src, sem):
        def loss(p):
            out = nnx.merge(gd, p, rest)(src, sem)
            return jnp.mean(jnp.abs(out["rgb"][0] - target)) + 0.1 * jnp.mean(out["rgb"][1] ** 2)
        return jax.value_and_grad(loss)(params)

    value, grads = loss_and_grad(params, src, sem[:2])
    flat = {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(grads)}
    assert np.isfinite(float(value))
    assert all(np.isfinite(g).all() for g in flat.values())
    dead = {k for k, g in flat.items() if not np.any(g)}
    # Only the inactive noise weights and the never-called to_rgb1 get no gradient.
    assert all(".noise." in k or k.startswith("dec.to_rgb1.") for k in dead), sorted(dead)
    assert flat["dec.direction.weight"].any() and flat["enc.semantics_enc.first.weight"].any()


# --------------------------------------------------------------------------- weight loading

def test_export_and_load_round_trip(tiny):
    cfg, model, src, sem = tiny
    sd = aw.export_state_dict(model)
    assert sd["dec.convs.0.conv.weight"].shape == (1, 64, 64, 3, 3)  # torch layouts
    assert sd["enc.net_app.convs.1.conv2.1.weight"].shape == (32, 16, 3, 3)
    np.testing.assert_allclose(sd["dec.convs.0.conv.blur.kernel"].sum(), 4.0)
    inferred = aw.infer_animator_config(sd, release_sft_wiring=False)
    assert dataclasses.replace(inferred, channels=cfg.channels) == cfg
    assert inferred.channel_map() == cfg.channel_map()
    loaded = aw.animator_from_state_dict(sd, cfg)
    np.testing.assert_array_equal(_FWD(loaded, src, sem[:2])["rgb"][0],
                                  _FWD(model, src, sem[:2])["rgb"][0])


def test_converter_reports_bad_state_dicts(tiny):
    cfg, model, _, _ = tiny
    sd = aw.export_state_dict(model)
    bad = dict(sd)
    del bad["dec.input.input"]
    bad["dec.extra.weight"] = np.zeros(3)
    bad["enc.fc.0.weight"] = np.zeros((7, 7), np.float32)
    bad["dec.to_rgbs.0.upsample.kernel"] = np.ones((4, 4), np.float32)
    with pytest.raises(aw.WeightConversionError) as exc:
        aw.animator_from_state_dict(bad, cfg)
    msg = str(exc.value)
    for part in ("missing key(s): dec.input.input", "unknown key(s): dec.extra.weight",
                 "mis-shaped key(s): enc.fc.0.weight", "dec.to_rgbs.0.upsample.kernel"):
        assert part in msg, msg
    prefixed = {"module." + k: v for k, v in sd.items()}
    aw.animator_from_state_dict(prefixed, cfg, prefix="module.")
    with pytest.raises(aw.WeightConversionError, match="64-bit"):
        aw.animator_from_state_dict(sd, cfg, dtype=np.float64)


def test_official_state_dicts_convert_with_float64():
    sd = _state_dict("lia_generator")
    cfg = aw.infer_animator_config(sd, semantic=False)
    assert not cfg.use_sft and cfg.size == 256 and cfg.channels is None
    with jax.enable_x64(True):
        model = aw.lia_generator_from_state_dict(sd, dtype=np.float64)
        assert isinstance(model, LIAGenerator)
        assert model.dec.convs[0].conv.weight[...].dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(model.dec.convs[0].conv.weight[...]),
                                      sd["dec.convs.0.conv.weight"][0].transpose(2, 3, 1, 0))


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        AnimatorConfig(size=100)
    with pytest.raises(ValueError, match="too short"):
        AnimatorConfig(window=20)
    with pytest.raises(ValueError, match="lacks resolution"):
        AnimatorConfig.tiny(channels=((4, 8), (8, 8)))
    assert AnimatorConfig(channel_scale=0.25).channel_map()[256] == 16
    model = aw.abstract_model(SemanticAnimator, AnimatorConfig.tiny())  # shapes suffice

    def call(x, s):
        return jax.eval_shape(lambda m, x, s: m(x, s), model, x, s)

    assert call(jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 27, 72)))["rgb"][0].shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="semantics must be"):
        call(jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 72, 27)))
    with pytest.raises(ValueError, match="source must be"):
        call(jnp.zeros((1, 3, 64, 64)), jnp.zeros((1, 27, 72)))


# ---------------------------------------------------------------------------- discriminator

def _np_minibatch_stddev_nchw(x, group=4, feat=1):
    """rosinality's torch code, transcribed on NCHW numpy arrays."""
    b, c, h, w = x.shape
    g = min(b, group)
    y = x.reshape(g, -1, feat, c // feat, h, w)
    y = np.sqrt(y.var(0) + 1e-8)
    y = y.mean(axis=(2, 3, 4), keepdims=True).squeeze(2)
    y = np.tile(y, (g, 1, h, w))
    return np.concatenate([x, y], 1)


def test_minibatch_stddev_matches_torch_semantics():
    x = np.random.default_rng(3).standard_normal((8, 4, 3, 6))  # NCHW
    with jax.enable_x64(True):
        got = minibatch_stddev(jnp.asarray(x.transpose(0, 2, 3, 1)), 4, 2)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2),
                               _np_minibatch_stddev_nchw(x, 4, 2), rtol=1e-12)
    with pytest.raises(ValueError, match="not divisible"):
        minibatch_stddev(jnp.zeros((6, 4, 4, 8)))


def test_discriminator_shapes_and_gradients():
    cfg = DiscriminatorConfig.tiny()
    disc = Discriminator(cfg, rngs=nnx.Rngs(0))
    same = Discriminator(64, channels=AnimatorConfig.tiny().channel_map(), rngs=nnx.Rngs(0))
    assert same.config == cfg
    x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (8, 64, 64, 3)), jnp.float32)
    gd, params = nnx.split(disc)

    @jax.jit
    def step(params, x):
        def loss(p, x):  # LIA's D loss on "real" x and "fake" -x
            d = nnx.merge(gd, p)
            return jnp.mean(jax.nn.softplus(-d(x))) + jnp.mean(jax.nn.softplus(d(-x)))
        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    value, (g_params, g_x) = step(params, x)
    fwd = jax.jit(lambda d, x: d(x))
    assert fwd(disc, x).shape == (8, 1) and fwd(disc, x[:2]).shape == (2, 1)
    assert np.isfinite(float(value)) and g_x.shape == x.shape and bool(jnp.isfinite(g_x).all())
    leaves = jax.tree.leaves(g_params)
    assert leaves and all(bool(jnp.isfinite(g).all()) and bool(jnp.any(g)) for g in leaves)
    # official names round-trip (a LIA discriminator checkpoint's ['dis'] loads the same way)
    sd = aw.export_state_dict(disc)
    assert sd["final_linear.0.weight"].shape == (64, 64 * 16)
    assert sd["convs.1.conv2.0.kernel"].shape == (4, 4)
    back = aw.discriminator_from_state_dict(sd, cfg)
    np.testing.assert_array_equal(fwd(back, x), fwd(disc, x))
