"""DDPM / DDIM samplers and the long-audio windowing (tiny random denoisers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gohd_jax.diffusion import samplers, windowing
from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig
from gohd_jax.parallel import batch_sharding, make_mesh


def _model(channels=6, seed=0):
    cfg = MotionDenoiserConfig.tiny(channels, channels)
    model = MotionDenoiser(cfg, rngs=nnx.Rngs(seed))
    # a non-trivial eps (the official output layer starts at zero)
    k = model.output_projection.kernel
    k.value = 0.3 * jax.random.normal(jax.random.key(seed + 1), k[...].shape)
    return cfg, model


def _cond(cfg, b, t, seed=2):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(k1, (b, t, cfg.local_dim)),
            0.1 * jax.random.normal(k2, (b, cfg.global_dim)))


def test_ddim_full_steps_eta1_is_the_ddpm_chain():
    betas = samplers.linear_betas()
    ddpm, ddim = samplers.ddpm_chain(betas), samplers.ddim_chain(betas, 150, eta=1.0)
    for k in ("n", "c1", "c2", "sigma"):
        np.testing.assert_allclose(ddim[k], ddpm[k], rtol=1e-4, atol=1e-7, err_msg=k)  # DDPM: float32 1 - alpha_cum
    cfg, model = _model()
    lc, gc = _cond(cfg, 2, 6)
    noise_init = jax.random.normal(jax.random.key(5), (2, 6, 6))
    noise = jax.random.normal(jax.random.key(6), (149, 2, 6, 6))
    a = samplers.sample(model, lc, gc, noise_init=noise_init, noise_steps=noise)
    b = samplers.sample(model, lc, gc, noise_init=noise_init, noise_steps=noise,
                        spec=samplers.SamplerSpec("ddim", 150, eta=1.0))
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_ddim_few_steps_deterministic_and_denoises():
    betas = samplers.linear_betas()
    chain = samplers.ddim_chain(betas, 25)
    assert chain["n"][0] == 149 and chain["n"][-1] == 0 and len(chain["n"]) == 25
    assert np.all(chain["sigma"] == 0)  # eta = 0
    # an exact "oracle" denoiser for data x0 = 0: eps_hat = x / sqrt(1 - alpha_cum_t) recovers 0
    ac = np.cumprod(1 - betas.astype(np.float64))

    class Oracle(nnx.Module):
        def __init__(self):
            self.cfg = MotionDenoiserConfig.tiny(2, 2)

        def __call__(self, x, step, lc, gc):
            return x / jnp.sqrt(1.0 - jnp.asarray(ac, jnp.float32)[step.astype(jnp.int32)])[:, None, None]

    lc = jnp.zeros((3, 8, 16))
    out = samplers.sample(Oracle(), lc, None, key=jax.random.key(0), spec=samplers.SamplerSpec("ddim", 25))
    assert float(jnp.abs(out).max()) < 1e-4
    cfg, model = _model()
    lc, gc = _cond(cfg, 2, 12)
    s = samplers.SamplerSpec("ddim", 10)
    x1 = samplers.sample(model, lc, gc, key=jax.random.key(3), spec=s)
    x2 = samplers.sample(model, lc, gc, key=jax.random.key(3), spec=s)
    np.testing.assert_array_equal(x1, x2)
    with pytest.raises(ValueError, match="DDIM steps"):
        samplers.ddim_chain(betas, 151)
    with pytest.raises(ValueError, match="method"):
        samplers.SamplerSpec("plms")


@pytest.mark.parametrize("alignment", ["release", "training"])
def test_windows_share_one_frame_and_carry_the_previous_frame(alignment):
    cfg, model = _model()
    lc, _ = _cond(cfg, 2, 40)
    first = np.asarray(0.1 * jax.random.normal(jax.random.key(9), (2, 6)))
    sampler = windowing.WindowSampler(model, spec=samplers.SamplerSpec("ddim", 4), residual=True,
                                      alignment=alignment)
    chunks = list(windowing.iter_windows(sampler, np.asarray(lc), first, window=16, key=jax.random.key(1)))
    assert [s for s, _ in chunks] == [0, 1, 16, 31]
    assert [c.shape[1] for _, c in chunks] == [1, 15, 15, 9]
    np.testing.assert_array_equal(chunks[0][1][:, 0], first)
    # window 2 (new frames 16..30) is the sampler with pose0 = frame 15 (window 1's last output),
    # run on the mel of frames 16..30 (release) or 15..30, whose index 0 is frame 15 (training)
    prev = chunks[1][1][:, -1]
    key = jax.random.fold_in(jax.random.key(1), 1)
    if alignment == "release":
        want = sampler(jnp.asarray(lc[:, 16:31]), jnp.asarray(prev), key)
    else:
        want = sampler(jnp.asarray(lc[:, 15:31]), jnp.asarray(prev), key)
        np.testing.assert_allclose(want[:, 0], prev, atol=1e-6)  # index 0 lands on the shared frame
        want = want[:, 1:]
    np.testing.assert_allclose(chunks[2][1], want, atol=1e-6)
    # the last, short window is padded to the common shape: one compilation for all windows
    assert sampler.cache_size() == 1
    full = windowing.generate_long(sampler, np.asarray(lc), first, window=16, key=jax.random.key(1))
    np.testing.assert_array_equal(full[:, 16:31], chunks[2][1])


def test_absolute_windows_keep_the_denoisers_values():
    """Gaze (absolute, training alignment): index 0 is set to the known frame and the rest is the
    denoiser's own output, not translated by index 0's error (which would drift window by window)."""
    cfg, model = _model(channels=2)
    lc, _ = _cond(cfg, 2, 16)
    prev = jnp.asarray([[0.3, -0.2], [-0.1, 0.05]], jnp.float32)
    spec = samplers.SamplerSpec("ddim", 3)
    key = jax.random.key(4)
    got = windowing.WindowSampler(model, spec=spec, residual=False, alignment="training")(lc, prev, key)
    raw = windowing.WindowSampler(model, spec=spec, residual=False, alignment="release")(lc, prev, key)
    np.testing.assert_allclose(got[:, 0], prev, atol=1e-7)
    np.testing.assert_allclose(got[:, 1:], raw[:, 1:], atol=1e-6)  # release = the raw clamped output
    assert float(jnp.abs(raw[:, 0] - prev).max()) > 1e-3  # so a translation would have moved the rest


def test_long_audio_constant_device_memory():
    """Ten minutes of audio (15,000 frames) in 150-frame windows: live device bytes stay flat."""
    cfg, model = _model(channels=2)
    t = 25 * 600
    cond = np.random.default_rng(0).normal(size=(1, t, cfg.local_dim)).astype(np.float32)
    sampler = windowing.WindowSampler(model, spec=samplers.SamplerSpec("ddim", 2), residual=False,
                                      alignment="training")
    live = []
    produced = 0
    for i, (start, frames) in enumerate(windowing.iter_windows(sampler, cond, np.zeros((1, 2), np.float32),
                                                               window=150, key=jax.random.key(0))):
        produced = start + frames.shape[1]
        if i >= 2:
            live.append(sum(a.nbytes for a in jax.live_arrays()))
    assert produced == t
    assert len(live) > 90
    # flat: within one window's buffers (the whole condition on device would be 19 MB)
    assert max(live) - min(live) <= 64 * 1024, (min(live), max(live))
    assert sampler.cache_size() == 1


def test_sampler_shards_over_devices():
    cfg, model = _model()
    mesh = make_mesh(-1, 1, devices=jax.devices()[:4])
    lc, gc = _cond(cfg, 8, 20)
    sampler = windowing.WindowSampler(model, spec=samplers.SamplerSpec("ddim", 3), residual=True,
                                      alignment="release")
    key = jax.random.key(4)
    put = lambda a: jax.device_put(a, batch_sharding(mesh, np.ndim(a)))  # noqa: E731
    sharded = sampler(put(np.asarray(lc[:, :15])), put(np.asarray(gc)), key)
    assert len(sharded.sharding.device_set) == 4
    local = sampler(lc[:, :15], gc, key)
    np.testing.assert_allclose(sharded, local, atol=1e-5)
