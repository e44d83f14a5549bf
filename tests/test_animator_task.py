"""The animator GAN task on the sharded trainer (tiny size, synthetic clips)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from configs import animator as animator_config
from data_pipelines.synthetic.cli import write_synthetic_dataset
from data_pipelines.synthetic.generator import SynthConfig
from gohd_jax.parallel import make_mesh
from gohd_jax.train.tasks.animator import AnimatorTask
from gohd_jax.train.trainer import Trainer


@pytest.fixture(scope="module")
def synth64(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth64")
    write_synthetic_dataset(root, SynthConfig(size=64, seconds=2.0, num_identities=4, seed=7), 8,
                            clips_per_shard=8, workers=0)
    return root


def _config(data_dir, **kw):
    c = animator_config.get_config("tiny")
    c.data.dir = str(data_dir)
    c.update({**dict(batch_size=4, num_steps=30, log_every=10, eval_every=30, eval_steps=1, checkpoint_every=30),
              **kw})
    return c


@pytest.mark.slow  # ~65 s of a worker (compiles on a 2x2 mesh); CI runs it after make test (10-minute budget)
def test_gan_training_runs_and_reconstruction_improves(synth64, tmp_path):
    cfg = _config(synth64, num_steps=8, log_every=4, eval_every=8, checkpoint_every=8)
    cfg.task.gan_start_step = 4  # the adversarial terms join after a short warm-up
    result = Trainer(AnimatorTask(cfg), cfg, tmp_path, mesh=make_mesh(2, 2, devices=jax.devices()[:4])).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss_l1" in r]
    assert [r["step"] for r in train] == [4, 8]
    assert all(np.isfinite(r[k]) for r in train
               for k in ("loss_g", "loss_d", "loss_gan_g", "loss_ms_ssim", "loss_changed", "loss_mouth"))
    assert train[-1]["loss_l1"] < train[0]["loss_l1"]  # learning to reconstruct
    assert train[0]["loss_d"] == 0.0 and train[0]["loss_gan_g"] == 0.0  # warm-up: gated off
    assert train[1]["loss_d"] == pytest.approx(2 * np.log(2), abs=0.2)  # D just on: logits ~0
    ev = result.eval_metrics
    assert {"eval/psnr", "eval/psnr_copy_source", "eval/l1", "eval/changed_l1",
            "eval/changed_l1_copy_source", "eval/sharpness"} <= set(ev)
    assert 5.0 < ev["eval/psnr"] < 60.0


@pytest.mark.slow  # ~50 s; CI runs it after make test (10-minute budget)
def test_warm_up_leaves_the_discriminator_untouched(synth64, tmp_path):
    """Before gan_start_step the discriminator's params and Adam state stay bit for bit (the
    gate selects the old ones); from it on, they move."""
    cfg = _config(synth64)
    cfg.task.gan_start_step = 1
    trainer = Trainer(AnimatorTask(cfg), cfg, tmp_path, mesh=make_mesh(4, 1, devices=jax.devices()[:4]))
    state = trainer.init_state()
    batch = trainer._global(next(trainer.data_iterator("train")))
    leaves = lambda s: jax.tree_util.tree_leaves((s.params["discriminator"], s.opt["discriminator"]))
    before = [np.asarray(x) for x in leaves(state)]
    state, metrics = trainer._train_step(state, batch)  # step 0: warm-up
    assert float(metrics["loss_d"]) == 0.0
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, leaves(state)))
    assert not all(np.array_equal(a, np.asarray(b)) for a, b in
                   zip(jax.tree_util.tree_leaves(state.params["generator"]),
                       jax.tree_util.tree_leaves(trainer.init_state().params["generator"])))
    state, metrics = trainer._train_step(state, batch)  # step 1: adversarial
    assert float(metrics["loss_d"]) > 0.0
    assert not all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, leaves(state)))


@pytest.mark.slow
def test_vgg_perceptual_loss_path(synth64, tmp_path):
    """With VGG19 weights given (random ones here), the VGG pyramid replaces MS-SSIM + gradient."""
    from flax import nnx

    from gohd_jax.interop import vgg19_weights
    from gohd_jax.models.vgg19 import VGG19Features

    vgg = VGG19Features(rngs=nnx.Rngs(0))
    path = tmp_path / "vgg19.npz"
    vgg19_weights.save_vgg19_npz(vgg.params_dict(), path)
    cfg = _config(synth64, num_steps=4, log_every=2, eval_every=0, checkpoint_every=4)
    cfg.task.vgg19_weights = str(path)
    Trainer(AnimatorTask(cfg), cfg, tmp_path / "run", mesh=make_mesh(4, 1, devices=jax.devices()[:4])).train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss_vgg" in row and "loss_ms_ssim" not in row and np.isfinite(row["loss_vgg"])


@pytest.mark.slow
@pytest.mark.long
def test_tiny_animator_beats_copying_the_source(tmp_path_factory, tmp_path):
    """About 2.5 min on 2 cores: the tiny config (copy-source init) for 300 reconstruction steps
    (the GAN starts at 500) on the `make demo` dataset's recipe (48 clips, 12 identities, 3 held
    out); held-out PSNR above copying the source frame and a lower L1 where target and source
    differ. 2026-12-06, uniform pairs: 26.12 vs 25.67 dB. 2026-12-07, half of the pairs chosen to
    differ in expression (the config now; they buy the mouth motion with some PSNR): 25.91 vs
    25.67 dB, changed-region L1 0.247 vs 0.306 (both on the 8 fake devices; on one device, as now,
    it passes in 148 s instead of 210 s alone, 2026-12-08)."""
    from configs import synthetic

    s = synthetic.get_config("demo")
    root = tmp_path_factory.mktemp("synth_demo")
    write_synthetic_dataset(root, SynthConfig(size=s.size, seconds=s.seconds, num_identities=s.identities,
                                              seed=s.seed), s.clips, clips_per_shard=s.clips_per_shard,
                            jpeg_quality=s.jpeg_quality, workers=0)
    cfg = animator_config.get_config("tiny")
    cfg.data.dir = str(root)
    cfg.update(num_steps=300, log_every=100, eval_every=300, eval_steps=8, checkpoint_every=300)
    # One device, as `make demo` trains it: the 8 fake devices split a batch of 8 into 1s.
    ev = Trainer(AnimatorTask(cfg), cfg, tmp_path, mesh=make_mesh(1, 1, devices=jax.devices()[:1])).train().eval_metrics
    assert ev["eval/psnr"] > ev["eval/psnr_copy_source"] + 0.15, ev
    assert ev["eval/changed_l1"] < 0.9 * ev["eval/changed_l1_copy_source"], ev
