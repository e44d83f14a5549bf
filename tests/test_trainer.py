"""The sharded trainer: meshes, exact resume, SIGTERM, restore on another mesh, NaN stop, metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import records
from configs import mouth_regressor
from gohd_jax.parallel import make_mesh
from gohd_jax.train.checkpoint import Checkpointer
from gohd_jax.train.tasks.mouth_regressor import MouthRegressorTask
from gohd_jax.train.trainer import Trainer, TrainingDiverged
from tests.fakes import FakeClips

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fakeclips")
    records.write_dataset(root, 12, FakeClips(frames=8, size=16, identities=6), clips_per_shard=6, progress=False)
    return root


def _config(data_dir, **overrides):
    c = mouth_regressor.get_config("tiny")
    c.data.dir = str(data_dir)
    c.data.window = 4
    c.batch_size = 8
    c.num_steps = 6
    c.log_every = 2
    c.eval_every = 0
    c.checkpoint_every = 100
    c.task.hidden = 32
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def _losses(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _final_params(trainer: Trainer, workdir):
    ckpt = Checkpointer(workdir)
    state = ckpt.restore(ckpt.latest_step(), trainer.abstract_state, None)
    ckpt.close()
    return jax.device_get(state)


def test_meshes_agree_on_the_loss(data_dir, tmp_path):
    assert jax.device_count() == 8
    runs = {}
    for data, fsdp in ((8, 1), (4, 2), (1, 8)):
        cfg = _config(data_dir, **{"mesh.data": data, "mesh.fsdp": fsdp})
        trainer = Trainer(MouthRegressorTask(cfg), cfg, tmp_path / f"m{data}x{fsdp}")
        result = trainer.train()
        assert result.status == "done" and result.step == 6
        runs[(data, fsdp)] = _losses(tmp_path / f"m{data}x{fsdp}")
    base = runs[(8, 1)]
    assert len(base) == 3 and base[-1] < base[0]  # it learns
    for key, losses in runs.items():
        np.testing.assert_allclose(losses, base, rtol=2e-5, err_msg=str(key))
    # fsdp really shards the big kernel over the fsdp axis
    t = Trainer(MouthRegressorTask(cfg), cfg, tmp_path / "x")
    spec = t.state_shardings.params["regressor"]["l1"]["kernel"].spec
    assert "fsdp" in tuple(spec)


def _run_cli(workdir, data_dir, steps, *extra, wait=True, env=None):
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs" / "mouth_regressor.py:tiny"),
           f"--workdir={workdir}", f"--config.data.dir={data_dir}", "--config.data.window=4",
           "--config.batch_size=8", f"--config.num_steps={steps}", "--config.log_every=1", "--config.eval_every=0",
           "--config.checkpoint_every=4", "--config.task.hidden=32", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_exact_resume_after_kill_and_sigterm(data_dir, tmp_path):
    n = 12
    straight = tmp_path / "straight"
    _run_cli(straight, data_dir, n)
    # N/2 steps, then the process is gone; resume to N.
    resumed = tmp_path / "resumed"
    _run_cli(resumed, data_dir, n // 2)
    out = _run_cli(resumed, data_dir, n)
    assert "resumed from step 6" in out
    # SIGTERM mid-run: saves, exits 0, resumes.
    term = tmp_path / "term"
    proc = _run_cli(term, data_dir, 100000, wait=False)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "step 3/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "preempted: checkpoint of step" in rest
    import re
    stopped_at = int(re.search(r"preempted: checkpoint of step (\d+)", rest).group(1))
    assert stopped_at < n
    _run_cli(term, data_dir, n)

    cfg = _config(data_dir, num_steps=n)
    trainer = Trainer(MouthRegressorTask(cfg), cfg, tmp_path / "probe")
    want = _final_params(trainer, straight)
    for other in (resumed, term):
        got = _final_params(trainer, other)
        assert int(got.step) == n
        for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
            np.testing.assert_array_equal(a, b)  # bit-identical


def test_restore_onto_another_mesh(data_dir, tmp_path):
    cfg = _config(data_dir, num_steps=4, checkpoint_every=4)
    Trainer(MouthRegressorTask(cfg), cfg, tmp_path / "run", mesh=make_mesh(8, 1)).train()
    cfg2 = _config(data_dir, num_steps=6)
    mesh2 = make_mesh(2, 4)
    t2 = Trainer(MouthRegressorTask(cfg2), cfg2, tmp_path / "run", mesh=mesh2)
    result = t2.train()
    assert result.step == 6
    kernel = t2.final_state.params["regressor"]["l1"]["kernel"]
    assert kernel.sharding.mesh.shape == mesh2.shape and "fsdp" in tuple(kernel.sharding.spec)
    straight = _config(data_dir, num_steps=6)
    Trainer(MouthRegressorTask(straight), straight, tmp_path / "straight", mesh=make_mesh(8, 1)).train()
    np.testing.assert_allclose(_losses(tmp_path / "run")[-1], _losses(tmp_path / "straight")[-1], rtol=1e-5)


class _NanAfterFour(MouthRegressorTask):
    def train_step(self, ctx, state, batch, key):
        state, metrics = super().train_step(ctx, state, batch, key)
        bad = jnp.where(state.step >= 4, jnp.nan, 0.0)  # state.step is the step before this one
        return state.replace(params=jax.tree_util.tree_map(lambda p: p + bad, state.params)), \
            {**metrics, "loss_extra": metrics["loss"] + bad}


def test_nan_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    cfg = _config(data_dir, num_steps=10, checkpoint_every=2, log_every=5)
    trainer = Trainer(_NanAfterFour(cfg), cfg, tmp_path)
    with pytest.raises(TrainingDiverged, match=r"'loss_extra' is nan at step 5"):
        trainer.train()
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == 4
    state = ckpt.restore(4, trainer.abstract_state, None)
    ckpt.close()
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(jax.device_get(state.params)))


def test_metrics_files_and_log_line(data_dir, tmp_path, caplog):
    import logging
    cfg = _config(data_dir, eval_every=6, eval_steps=2)
    with caplog.at_level(logging.INFO, logger="gohd_jax.train"):
        result = Trainer(MouthRegressorTask(cfg), cfg, tmp_path).train()
    assert "steps/s" in caplog.text and "ETA" in caplog.text and "loss=" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert any("eval/mse" in r for r in rows) and "eval/mse" in result.eval_metrics
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_two_processes_train_together(data_dir, tmp_path):
    import portpicker
    port = portpicker.pick_unused_port()
    procs = [_run_cli(tmp_path / "mp", data_dir, 4, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}", "--cpu_devices=2", wait=False) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    finals = [o.strip().splitlines()[-1] for o in outs]
    assert finals[0].startswith("done at step 4") and finals[0] == finals[1]  # same loss on both
    assert (tmp_path / "mp" / "checkpoints" / "4").is_dir()
    # Restore the shared checkpoint in both processes and go on.
    port = portpicker.pick_unused_port()
    procs = [_run_cli(tmp_path / "mp", data_dir, 6, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                      f"--process_id={i}", "--cpu_devices=2", wait=False) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "resumed from step 4" in out, out[-3000:]
    assert outs[0].strip().splitlines()[-1] == outs[1].strip().splitlines()[-1]


def test_mouth_regressor_learns_on_synthetic_clips(tmp_path):
    """The trainer's own task on real synthetic records: held-out error well below predicting the mean."""
    from data_pipelines.synthetic.cli import write_synthetic_dataset
    from data_pipelines.synthetic.generator import SynthConfig

    data = tmp_path / "synth"
    write_synthetic_dataset(data, SynthConfig(size=32, seconds=3.0, num_identities=4, seed=3), 8,
                            clips_per_shard=8, workers=0)
    cfg = _config(data, num_steps=150, log_every=50, eval_every=150, eval_steps=4, batch_size=16)
    cfg.data.window = 8
    cfg.task.hidden = 64
    cfg.task.learning_rate = 2e-3
    result = Trainer(MouthRegressorTask(cfg), cfg, tmp_path / "run", mesh=make_mesh(8, 1)).train()
    losses = _losses(tmp_path / "run")
    assert losses[-1] < 0.5 * losses[0]
    ev = result.eval_metrics
    print("mouth regressor:", losses, ev)
    assert ev["eval/mse"] < 0.6 * ev["eval/mse_predict_mean"], ev
