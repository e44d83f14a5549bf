"""Whole training runs of every task, as subprocesses: exact resume after a crash, and the runs as
``gohd animate`` reads them.

Exact resume after a crash, for every task: ``kill -9`` after a periodic checkpoint has committed
and further (donated) steps have run, then the same command again; the final state equals an
uninterrupted run's bit for bit (parameters, optimizer states, EMA, PRNG, step).

The kill comes from a test hook of the trainer (``GOHD_TEST_KILL_AFTER_STEP``), not a timer: the
process SIGKILLs itself right after step N once the checkpoint before it has committed. Runs
share a persistent compilation cache so the second and third runs of a task skip compiling.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS, KILL_AFTER, EVERY = 6, 5, 2
TASKS = {  # name -> (config, extra flags; {run} names another task's straight run)
    "animator": ("configs/animator.py:tiny", ["--config.task.gan_start_step=2", "--config.ema_decay=0.9"]),
    "pose": ("configs/motion.py:pose_tiny", []),
    "gaze": ("configs/motion.py:gaze_tiny", []),
    "sync": ("configs/expression.py:sync_tiny", []),
    "stage1": ("configs/expression.py:stage1_tiny", ["--config.task.expert={sync}"]),
    "stage2": ("configs/expression.py:stage2_tiny", ["--config.task.stage1={stage1}"]),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from data_pipelines.synthetic.cli import write_synthetic_dataset
    from data_pipelines.synthetic.generator import SynthConfig

    root = tmp_path_factory.mktemp("synth_resume")
    write_synthetic_dataset(root, SynthConfig(size=64, seconds=4.0, num_identities=4, seed=3), 8,
                            clips_per_shard=8, workers=0)
    return root


def _train(task, workdir, data, runs, cache, steps, kill=False):
    config, extra = TASKS[task]
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), f"--config={REPO / config}", f"--workdir={workdir}",
           f"--config.data.dir={data}", "--config.batch_size=4", f"--config.num_steps={steps}",
           "--config.log_every=1", "--config.eval_every=0", f"--config.checkpoint_every={EVERY}",
           "--config.data.num_workers=0", *[e.format(**runs) for e in extra]]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GOHD_COMPILE_CACHE": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    if kill:
        env["GOHD_TEST_KILL_AFTER_STEP"] = str(KILL_AFTER)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _state(task, workdir, runs, data):
    """The run's newest checkpointed state, as host arrays."""
    import ml_collections

    from gohd_jax.parallel import make_mesh
    from gohd_jax.train.checkpoint import Checkpointer
    from gohd_jax.train.restore import run_config
    from gohd_jax.train.tasks import get_task_class
    from gohd_jax.train.trainer import Trainer

    cfg = ml_collections.ConfigDict(run_config(workdir).to_dict())
    trainer = Trainer(get_task_class(cfg.task_name)(cfg), cfg, workdir, mesh=make_mesh(1, 1, devices=jax.devices()[:1]))
    ckpt = Checkpointer(workdir)
    try:
        step = ckpt.latest_step()
        return step, jax.device_get(ckpt.restore(step, trainer.abstract_state, None))
    finally:
        ckpt.close()


def _check(tasks, synth, tmp_path):
    runs: dict[str, str] = {}
    cache = tmp_path / "xla_cache"
    for task in tasks:
        straight, crashed = tmp_path / f"{task}_straight", tmp_path / f"{task}_crashed"
        code, out = _train(task, straight, synth, runs, cache, STEPS)
        assert code == 0, out[-3000:]
        runs[task] = str(straight)
        code, out = _train(task, crashed, synth, runs, cache, STEPS, kill=True)
        assert code == -9, f"{task}: expected SIGKILL, got {code}\n{out[-3000:]}"
        assert (crashed / "checkpoints" / str(KILL_AFTER - 1)).is_dir()
        assert not (crashed / "checkpoints" / str(STEPS)).exists()
        code, out = _train(task, crashed, synth, runs, cache, STEPS)
        assert code == 0 and f"resumed from step {KILL_AFTER - 1}" in out, out[-3000:]
        (s1, want), (s2, got) = _state(task, straight, runs, synth), _state(task, crashed, runs, synth)
        assert s1 == s2 == STEPS and int(got.step) == STEPS
        leaves_w, leaves_g = jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves(got)
        assert len(leaves_w) == len(leaves_g)
        for (path, a), b in zip(leaves_w, leaves_g):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{task}: {jax.tree_util.keystr(path)}")
        if task == "animator":  # the GAN was on before the kill, and the EMA moves
            assert "discriminator" in got.opt and got.ema


@pytest.mark.slow
def test_kill_9_resume_is_exact_animator_pose_gaze(synth, tmp_path):
    _check(["animator", "pose", "gaze"], synth, tmp_path)


@pytest.mark.slow
def test_kill_9_resume_is_exact_sync_stage1_stage2(synth, tmp_path):
    _check(["sync", "stage1", "stage2"], synth, tmp_path)


@pytest.mark.slow
def test_gohd_animate_reads_a_folder_of_training_runs(synth, tmp_path):
    """``gohd animate --checkpoint DIR`` on the runs as ``make demo`` leaves them (animator/, pose/,
    gaze/, stage1/ under one folder, each a checkpointed training run) renders a clip."""
    import math

    import soundfile as sf

    runs = tmp_path / "runs"
    for task, folder in (("animator", "animator"), ("pose", "pose"), ("gaze", "gaze"), ("stage1", "stage1")):
        code, out = _train(task, runs / folder, synth, {"sync": ""}, tmp_path / "xla_cache", 1)
        assert code == 0, out[-3000:]
    t = np.arange(16000) / 16000
    sf.write(str(tmp_path / "speech.wav"), (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(6 * t))
                                            ).astype(np.float32), 16000)
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "face.png")
    proc = subprocess.run([sys.executable, "-m", "gohd_jax.infer.cli", "animate", "--image", str(tmp_path / "face.png"),
                           "--audio", str(tmp_path / "speech.wav"), "--out", str(tmp_path / "out.mp4"),
                           "--checkpoint", str(runs), "--sampler", "ddim", "--steps", "2"],
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import av

    with av.open(str(tmp_path / "out.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == math.ceil(1.0 * 25)
