"""SyncNet, the expression stages (frame-wise stage 1, LSTM stage 2) and their converters."""

from __future__ import annotations

import io as _io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gohd_jax.interop import expression_weights as ew
from gohd_jax.interop import oracle_weights as ow
from gohd_jax.interop import parity
from gohd_jax.models.expression import LSTM, ExpressionConfig, FrameExpression, TwoStageExpression
from gohd_jax.models.syncnet import SyncNet, SyncNetConfig, sync_probability
from tests.conftest import require_shared


def _state_dict(kind: str):
    man = ow.load_manifest(require_shared("reference", kind, "manifest.json"))
    return ow.make_state_dict(man, ow.manifest_seed(man))


@pytest.mark.parametrize("kind", ["audio2exp", "audio2exp_twostage"])
def test_parity(kind):
    out, err = _io.StringIO(), _io.StringIO()
    status = parity.check_folder(require_shared("reference", kind), out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert status == parity.EXIT_OK, err.getvalue()
    want = {"audio2exp": {"exp_motion_pred", "audio_embedding", "exp_window_postprocessed"},
            "audio2exp_twostage": {"control_seq", "exp_motion_pred", "audio_embedding"}}[kind]
    assert {d["array"] for d in lines} == want and all(d["max_rel"] < 1e-5 for d in lines)


def test_released_checkpoint_layout_loads_with_its_module_prefix():
    sd = {f"module.{k}": v for k, v in _state_dict("audio2exp").items()}
    model = ew.frame_expression_from_state_dict(sd)
    assert model.cfg.controls == 0 and model.mapping1.kernel.shape == (576, 64)
    broken = dict(sd)
    broken.pop("module.mapping1.bias")
    with pytest.raises(KeyError, match="mapping1.bias"):
        ew.frame_expression_from_state_dict(broken)
    with pytest.raises(KeyError, match="unused"):
        ew.load_state_dict(FrameExpression(ExpressionConfig(), rngs=nnx.Rngs(0)),
                           {**sd, "module.extra.weight": np.zeros(3)})


def test_lstm_matches_a_numpy_reference_with_torch_gate_order():
    lstm = LSTM(5, 4, 2, rngs=nnx.Rngs(1))
    x = np.random.default_rng(0).normal(size=(3, 6, 5)).astype(np.float32)
    got, _ = lstm(jnp.asarray(x))

    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h = np.zeros((2, 3, 4)); c = np.zeros((2, 3, 4))  # noqa: E702
    want = []
    for t in range(6):
        inp = x[:, t]
        for layer in range(2):
            g = (inp @ np.asarray(lstm.kernel_ih[layer]) + np.asarray(lstm.bias_ih[layer])
                 + h[layer] @ np.asarray(lstm.kernel_hh[layer]) + np.asarray(lstm.bias_hh[layer]))
            i, f, gg, o = np.split(g, 4, axis=-1)
            c[layer] = sig(f) * c[layer] + sig(i) * np.tanh(gg)
            h[layer] = sig(o) * np.tanh(c[layer])
            inp = h[layer]
        want.append(inp.copy())
    np.testing.assert_allclose(got, np.stack(want, 1), atol=1e-5)


def test_two_stage_controls_start_at_control0_and_follow_the_noise():
    cfg = ExpressionConfig.tiny()
    model = TwoStageExpression(cfg, rngs=nnx.Rngs(0))
    audio = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 80, 16)), jnp.float32)
    exp0 = jnp.zeros((2, 64))
    control0 = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 21)), jnp.float32)
    a = model(audio, exp0, control0, jax.random.normal(jax.random.key(0), (2, 6, cfg.noise_dim)))
    b = model(audio, exp0, control0, jax.random.normal(jax.random.key(1), (2, 6, cfg.noise_dim)))
    assert a["controls"].shape == (2, 7, 21) and a["exp"].shape == (2, 7, 64)
    np.testing.assert_array_equal(a["controls"][:, 0], control0)
    assert float(jnp.abs(a["controls"][:, 1:] - b["controls"][:, 1:]).max()) > 1e-4
    with pytest.raises(ValueError, match="noise"):
        model(audio, exp0, control0, jnp.zeros((2, 7, cfg.noise_dim)))
    with pytest.raises(ValueError, match="80, 16"):
        model.stage1.embed_audio(jnp.zeros((2, 7, 16, 80)))


def test_syncnet_batchnorm_updates_in_training_and_is_frozen_in_eval():
    model = SyncNet(SyncNetConfig.tiny(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    audio = jnp.asarray(rng.normal(size=(4, 80, 16, 1)), jnp.float32)
    face = jnp.asarray(rng.uniform(size=(4, 48, 96, 15)), jnp.float32)
    mean0 = np.asarray(model.audio_encoder.blocks[0].bn.mean[...]).copy()
    a, v = model(audio, face)  # eval: running statistics untouched
    np.testing.assert_array_equal(model.audio_encoder.blocks[0].bn.mean[...], mean0)
    np.testing.assert_allclose(jnp.linalg.norm(a, axis=-1), 1.0, atol=1e-5)
    assert a.shape == v.shape == (4, 64) and float(a.min()) >= 0.0
    p = sync_probability(a, v)
    assert p.shape == (4,) and bool(jnp.all((p >= 0) & (p <= 1)))
    model(audio, face, train=True)
    assert float(np.abs(np.asarray(model.audio_encoder.blocks[0].bn.mean[...]) - mean0).max()) > 1e-4
    with pytest.raises(ValueError, match="1x1"):
        model.face_encoder(jnp.zeros((1, 32, 32, 15)))
