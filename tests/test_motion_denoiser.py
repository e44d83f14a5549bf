"""GoHD pose / gaze diffusion denoiser (LDA 'tisa'): tiny-config behaviour and oracle parity."""

from __future__ import annotations

import io as _io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gohd_jax.diffusion import samplers
from gohd_jax.interop import motion_weights, oracle_weights, parity
from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig, step_table
from gohd_jax.nn import tisa
from tests.conftest import require_shared


def _tiny(in_channels=6, global_dim=6, seed=0):
    cfg = MotionDenoiserConfig.tiny(in_channels, global_dim)
    return cfg, MotionDenoiser(cfg, rngs=nnx.Rngs(seed))


def _inputs(cfg, b=2, t=12, seed=1):
    k = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k[0], (b, t, cfg.in_channels))
    lc = jax.random.normal(k[1], (b, t, cfg.local_dim))
    gc = 0.1 * jax.random.normal(k[2], (b, cfg.global_dim))
    return x, lc, gc


def test_tiny_forward_shapes_and_step_forms():
    cfg, model = _tiny()
    x, lc, gc = _inputs(cfg)
    eps = model(x, jnp.array([3.5]), lc, gc)
    assert eps.shape == x.shape
    # output projection is zero-initialised: eps is the output bias (zeros) at init
    np.testing.assert_array_equal(np.asarray(eps), 0.0)
    # make the output non-trivial and compare step forms
    model.output_projection.kernel.value = 0.1 * jnp.ones_like(model.output_projection.kernel[...])
    e_int = model(x, jnp.array([3, 3]), lc, gc)
    e_flt = model(x, jnp.array([3.0, 3.0]), lc, gc)
    e_one = model(x, jnp.array([3.0]), lc, gc)
    e_scalar = model(x, 3, lc, gc)
    np.testing.assert_allclose(e_int, e_flt, atol=1e-6)
    np.testing.assert_allclose(e_one, e_flt, atol=1e-6)
    np.testing.assert_allclose(e_scalar, e_int, atol=1e-6)
    # per-frame global condition [B,T,G] equals the repeated [B,G]
    g_rep = jnp.broadcast_to(gc[:, None], (x.shape[0], x.shape[1], cfg.global_dim))
    np.testing.assert_allclose(model(x, 3, lc, g_rep), e_int, atol=1e-6)
    # fractional step interpolates the table rows
    emb = model.diffusion_embedding
    lo, hi = emb.lookup(jnp.array([3]))[0], emb.lookup(jnp.array([4]))[0]
    np.testing.assert_allclose(emb.lookup(jnp.array([3.25]))[0], lo + 0.25 * (hi - lo), atol=1e-6)


def test_tiny_grad_under_jit():
    cfg, model = _tiny(in_channels=2, global_dim=2)
    model.output_projection.kernel.value = 0.05 * jnp.ones_like(model.output_projection.kernel[...])
    x, lc, gc = _inputs(cfg, t=9)
    step = jnp.array([1.5, 7.0])

    @nnx.jit
    def loss_grad(m, x, step, lc, gc):
        def loss(m):
            return jnp.mean((m(x, step, lc, gc) - x) ** 2)
        return nnx.value_and_grad(loss)(m)

    val, grads = loss_grad(model, x, step, lc, gc)
    assert np.isfinite(float(val))
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    # gradient reaches the first layer's TISA parameters and the input projection
    g_ps = grads["residual_layers"][0]["nn"]["attention_blocks"][0]["attn"]["position_scorer"]
    assert float(jnp.abs(g_ps["offsets"][...]).sum()) > 0
    assert float(jnp.abs(grads["input_projection"]["kernel"][...]).sum()) > 0
    # fixed slopes and the step table are not parameters
    params = nnx.state(model, nnx.Param)
    assert "slopes" not in params["residual_layers"][0]["nn"]["attention_blocks"][0]["attn"][
        "position_scorer"]
    assert "embedding" not in params["diffusion_embedding"]


def test_tisa_bias_formula():
    ps = tisa.TisaBias(3, 4, rngs=nnx.Rngs(0))
    t = 6
    got = np.asarray(ps(t))
    off, amp = np.asarray(ps.offsets[...]), np.asarray(ps.amplitudes[...])
    sh, b, sl = np.asarray(ps.sharpness[...]), np.asarray(ps.bias[...]), np.asarray(ps.slopes[...])
    want = np.zeros((3, t, t))
    for h in range(3):
        for i in range(t):
            for j in range(t):
                d = i - j
                s = sum(abs(amp[k, h]) / (1 + np.exp(-np.sign(amp[k, h]) * (d - off[k, h])
                                                     / sh[k, h])) for k in range(4))
                want[h, i, j] = np.log(s + 1e-8 + abs(b[h])) - abs(d) * sl[h]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tisa.tisa_slopes(8))[[0, -1]],
                               [-np.log(1e-8) / 2.5, -np.log(1e-8) / 37.5], rtol=1e-6)


def test_ddpm_tiny_jit_sampler():
    cfg, model = _tiny()
    model.output_projection.kernel.value = 0.05 * jnp.ones_like(model.output_projection.kernel[...])
    _, lc, gc = _inputs(cfg, b=1, t=8)
    out = samplers.sample(model, lc, gc, key=jax.random.key(0), return_trace=True)
    assert out["x_in"].shape == (150, 1, 8, cfg.in_channels)
    np.testing.assert_array_equal(np.asarray(out["T"]), np.arange(149, -1, -1))
    assert float(jnp.abs(out["clamped"]).max()) <= 1.0
    # the recursion: x_{n-1} = c1 (x_n - c2 eps_n) + sigma_n z  (check the last, noise-free step)
    co = samplers.coefficients(samplers.linear_betas())
    x0, e0 = np.asarray(out["x_in"][-1]), np.asarray(out["eps"][-1])
    np.testing.assert_allclose(out["preclamp"], co["c1"][0] * (x0 - co["c2"][0] * e0), atol=1e-5)


def test_official_config_sizes():
    """72,752,966 / 72,730,434 values in the official state dicts (slopes included)."""
    for cfg, want in ((MotionDenoiserConfig.pose(), 72_752_966),
                      (MotionDenoiserConfig.gaze(), 72_730_434)):
        model = nnx.eval_shape(lambda c=cfg: MotionDenoiser(c, rngs=nnx.Rngs(0)))
        n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
        n += 40 * 8  # the fixed TISA slopes, 8 per attention block
        assert n == want


# --------------------------------------------------------------------------------------------
# Oracle parity (shared folder)
# --------------------------------------------------------------------------------------------

def _load(kind):
    ref = require_shared("reference", kind)
    with np.load(ref / "io.npz") as z:
        io = {k: z[k] for k in z.files}
    manifest = oracle_weights.load_manifest(ref / "manifest.json")
    sd = oracle_weights.make_state_dict(manifest, oracle_weights.manifest_seed(manifest))
    return ref, io, sd


def test_step_table_matches_official():
    ref = require_shared("reference", "pose_diffusion")
    with np.load(ref / "io.npz") as z:
        table = z["diffusion_embedding_table"]
    assert np.abs(np.asarray(step_table(150)) - table).max() <= 1e-6


@pytest.mark.slow
def test_single_call_parity_computed_table():
    """Pose single call with the jnp-computed step table (no oracle table): all within 1e-4.
    Slow (~60 s): the table itself is checked against the oracle's in the fast suite."""
    _, io, sd = _load("pose_diffusion")
    io = {k: v for k, v in io.items() if k != "diffusion_embedding_table"}
    out = motion_weights.parity_pose_diffusion(io, sd, None, sampler=False)
    for name, arr in out.items():
        res = parity.compare(arr, io[name], parity.rule_for("pose_diffusion", name, io[name]))
        assert res["pass"], (name, res["max_rel"])


@pytest.mark.parametrize("kind", ["pose_diffusion", pytest.param("gaze_diffusion", marks=pytest.mark.slow)])
def test_parity_folder(kind):
    """Full oracle (single call + 150-step sampler) through the parity module: ~60 s each on 2
    cores; gaze (the same code with 2 channels and no residual) runs with -m slow."""
    ref = require_shared("reference", kind)
    out, err = _io.StringIO(), _io.StringIO()
    assert parity.REGISTRY[kind].checker is not None
    status = parity.check_folder(ref, out=out, err=err)
    assert status == parity.EXIT_OK, err.getvalue() + out.getvalue()
