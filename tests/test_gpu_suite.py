"""bench/gpu_suite.py: its ``--smoke`` run on the CPU, where the packages the lent GPU image lacks
cannot be imported, and (slow) its animator train step against the trainer's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_suite.py"

# Not on the GPU machines' image (Python 3.12, jax + CUDA plugin, flax, optax, orbax, numpy, msgpack).
MISSING_ON_GPU_IMAGE = ("grain", "array_record", "librosa", "av", "ml_collections", "soundfile",
                        "tensorflow_datasets", "tqdm", "scipy")

# Runs the suite with an import hook that refuses those packages (and anything under them). One
# exception: jaxlib's CPU LAPACK kernels (the QR of the motion directions, lowered for the CPU)
# import scipy; on a GPU the QR is cuSOLVER's, and scipy is on the image anyway. So scipy is
# refused to everything but jax / jaxlib themselves.
RUNNER = """
import runpy, sys
BLOCKED = set(sys.argv[1].split(","))
JAX_MAY_IMPORT = {"scipy"}

def _importer():
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(("<frozen", "<string>")):
        f = f.f_back
    return f.f_code.co_filename if f is not None else ""

class _NotOnTheGpuImage:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BLOCKED:
            who = _importer()
            if top in JAX_MAY_IMPORT and any(p in who for p in ("/jaxlib/", "/jax/", "/" + top + "/")):
                return None
            raise ImportError(f"{name} is not on the lent GPU image (blocked by tests/test_gpu_suite.py; "
                              f"imported from {who})")
        return None

sys.meta_path.insert(0, _NotOnTheGpuImage())
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    leaked = sorted(({m.partition(".")[0] for m in sys.modules} & BLOCKED) - JAX_MAY_IMPORT)
    print("BLOCKED-MODULES-LOADED:", ",".join(leaked), file=sys.stderr)
"""

SECTIONS = ("render", "e2e", "latency", "train_animator", "train_denoiser", "memory")
# The numbers every row of a section must have, finite and > 0.
POSITIVE = {
    "render": ("frames_per_s", "ms_per_frame", "gflops_per_frame", "tflops_per_s", "mfu_vs_bf16_peak",
               "encode_source_s"),
    "e2e": ("frames", "total_s", "frames_per_s", "first_frame_s", "warmup_run_s"),
    "latency": ("frames", "total_s", "first_frame_s", "real_time_factor", "frames_per_s"),
    "train_animator": ("steps_per_s", "examples_per_s", "tflops_per_step", "model_tflops_per_step", "mfu", "hfu",
                       "compile_s"),
    "train_denoiser": ("steps_per_s", "windows_per_s", "tflops_per_step", "mfu", "hfu", "compile_s"),
}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow  # ~80 s; .ci/run runs it after make test
def test_smoke_run_on_cpu_without_the_missing_packages(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    # Compile speed only: XLA:CPU's LLVM optimisation off (the suite's code paths are unchanged).
    env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
                                              "--xla_llvm_disable_expensive_passes=true"]))
    cmd = [sys.executable, "-c", RUNNER, ",".join(MISSING_ON_GPU_IMAGE), str(SCRIPT), "--smoke", "--out", str(out),
           "--peak-tflops", "1", "--compile-workers", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    tail = f"\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, tail
    assert "BLOCKED-MODULES-LOADED: \n" in proc.stderr + "\n", tail

    doc = json.loads(out.read_text())
    assert doc["errors"] == [], doc["errors"]
    assert doc["meta"]["smoke"] is True and doc["meta"]["peak_bf16_flops"] == 1e12
    assert set(SECTIONS) <= set(doc["sections"]), sorted(doc["sections"])
    for name, fields in POSITIVE.items():
        rows = doc["sections"][name]["rows"]
        assert rows, f"section {name} has no rows"
        for row in rows:
            bad = {f: row.get(f) for f in fields if not _positive(row.get(f))}
            assert not bad, f"{name} row {row}: not finite and positive: {bad}"
    # a) both precisions; b, e) both samplers, every stage timed, the compiled programs used
    assert {r["precision"] for r in doc["sections"]["render"]["rows"]} == {"float32", "bfloat16"}
    for name in ("e2e", "latency"):
        sec = doc["sections"][name]
        assert [r["sampler"] for r in sec["rows"]] == ["DDIM-25", "DDPM-150"]
        assert sec["aot_misses"] == 0
        for r in sec["rows"]:
            assert all(_positive(v) for v in r["stages_s"].values()), r["stages_s"]
            assert r["frames"] == r["clips"] * round(r["audio_s"] * 25)
    assert doc["sections"]["e2e"]["rows"][0]["clips"] == 2 and doc["sections"]["latency"]["rows"][0]["clips"] == 1
    assert all(r["finite_losses"] for r in doc["sections"]["train_animator"]["rows"])
    # f) every program compiled with its time and FLOPs
    progs = doc["programs"]
    assert len(progs) >= 15 and doc["sections"]["memory"]["programs"] == len(progs)
    for name, rec in progs.items():
        assert _positive(rec["compile_s"]) and _positive(rec["flops"]), (name, rec)
    # one markdown table per section on stdout
    for title in ("a) render", "b) end to end", "c) animator", "d) pose denoiser", "e) one", "f) compiled"):
        assert f"**{title}" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_animator_train_step_matches_the_trainer(tmp_path):
    """The suite's transcription of AnimatorTask.train_step + Trainer._step gives the trainer's
    losses and parameters for the same state and batch (tiny config, float32, GAN on)."""
    import jax
    import numpy as np
    from flax import nnx

    from configs import animator
    from gohd_jax.parallel import make_mesh
    from gohd_jax.train.tasks.animator import AnimatorTask
    from gohd_jax.train.trainer import Trainer

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_suite

    cfg = animator.get_config("tiny")
    cfg.batch_size = 2
    cfg.precision = "float32"
    cfg.task.gan_start_step = 0
    task = AnimatorTask(cfg)
    trainer = Trainer(task, cfg, tmp_path, mesh=make_mesh(1, 1, devices=jax.devices()[:1]))
    hyper = {k: float(cfg.task[k]) for k in ("g_lr", "d_lr", "g_beta2", "d_beta2")}
    hyper.update(ema_decay=float(cfg.ema_decay), ema_warmup=bool(cfg.ema_warmup),
                 gan_start_step=int(cfg.task.gan_start_step),
                 loss={k: float(v) for k, v in cfg.task.loss.items()})
    models = nnx.eval_shape(lambda: task.create_models(nnx.Rngs(0)))
    step, _ = gpu_suite.make_animator_step(models, trainer.policy, hyper)

    batch = gpu_suite.animator_batch(2, task.model_cfg.size, seed=3, mouth=bool(cfg.task.loss.mouth))
    copy = lambda: jax.tree.map(lambda x: x.copy(), trainer.init_state())  # noqa: E731
    ref_state, ref_metrics = trainer._train_step(copy(), batch)
    state, metrics = step(copy(), batch)
    assert sorted(metrics) == sorted(ref_metrics)
    for k in metrics:
        np.testing.assert_allclose(float(metrics[k]), float(ref_metrics[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    assert int(state.step) == int(ref_state.step) == 1
    for got, want in zip(jax.tree.leaves((state.params, state.opt, state.ema)),
                         jax.tree.leaves((ref_state.params, ref_state.opt, ref_state.ema))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
