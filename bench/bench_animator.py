"""Animator benchmarks on this machine: official-size (256 px) and tiny forward (parameters and
GFLOPs of the encoder and decoder, source encoding once, rendering at batch 1, 8 and 32) and the
tiny config's train step (batch 8) in its reconstruction warm-up and with the GAN on.

    .venv/bin/python bench/bench_animator.py [--repeats 5] [--train-repeats 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from gohd_jax.models.animator import AnimatorConfig, SemanticAnimator  # noqa: E402


def best_of(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def gflops(fn, *args) -> float:
    """XLA's cost analysis of the compiled ``fn(*args)``, in GFLOPs."""
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-repeats", type=int, default=10, help="timed train steps per phase")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}); date {time.strftime('%Y-%m-%d')}")
    print("\n| model | params: encoder / decoder (M) | GFLOPs: encode source / render 1 frame | "
          "encode source, batch 1 (s) | render frames/s at batch 1 / 8 / 32 (one encoding) |")
    print("|---|---:|---:|---:|---:|")
    for name, cfg in (("official 256 px", AnimatorConfig()), ("tiny 64 px", AnimatorConfig.tiny())):
        model = SemanticAnimator(cfg, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        count = lambda m: sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(m, nnx.Param))) / 1e6
        src = jnp.zeros((1, cfg.size, cfg.size, 3))
        encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_source(x))
        render = jax.jit(lambda s, w, f, sem: nnx.merge(graphdef, s).render(w, f, sem)["rgb"][0])
        w, feats = encode(state, src)
        sems = {b: jnp.zeros((b, 27, 72)) for b in (1, 8, 32)}
        gflops_enc = gflops(encode, state, src)
        gflops_frame = gflops(render, state, w, feats, sems[1])
        t_enc = best_of(lambda: encode(state, src), args.repeats)
        fps = [b / best_of(lambda: render(state, w, feats, sems[b]), args.repeats) for b in sems]
        print(f"| {name} | {count(model.enc):.2f} / {count(model.dec):.2f} | {gflops_enc:.2f} / "
              f"{gflops_frame:.2f} | {t_enc:.3f} | {' / '.join(f'{f:.1f}' for f in fps)} |")
    train_steps(args.train_repeats)


def train_steps(repeats: int) -> None:
    """ms per jitted train step of configs/animator.py:tiny (batch 8, 1 device) on a small
    synthetic set, before gan_start_step (reconstruction only) and after it (+ GAN)."""
    from configs import animator
    from data_pipelines.synthetic.cli import write_synthetic_dataset
    from data_pipelines.synthetic.generator import SynthConfig
    from gohd_jax.parallel import make_mesh
    from gohd_jax.train.tasks.animator import AnimatorTask
    from gohd_jax.train.trainer import Trainer

    print("\n| tiny train step, batch 8 | ms/step | steps/s |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(data, SynthConfig(size=64, seconds=2.0, num_identities=4, seed=0), 8,
                                clips_per_shard=8, workers=0)
        for phase, start in (("reconstruction warm-up", 10 ** 9), ("GAN on", 0)):
            cfg = animator.get_config("tiny")
            cfg.data.dir = str(data)
            cfg.task.gan_start_step = start
            trainer = Trainer(AnimatorTask(cfg), cfg, Path(tmp) / phase.replace(" ", "_"),
                              mesh=make_mesh(1, 1, devices=jax.devices()[:1]))
            state = trainer.init_state()
            batch = trainer._global(next(trainer.data_iterator("train")))
            state, metrics = trainer._train_step(state, batch)  # compile
            jax.block_until_ready(metrics)
            t0 = time.perf_counter()
            for _ in range(repeats):
                state, metrics = trainer._train_step(state, batch)
                jax.block_until_ready(metrics)
            ms = (time.perf_counter() - t0) / repeats * 1000
            print(f"| {phase} | {ms:.0f} | {1000 / ms:.2f} |")


if __name__ == "__main__":
    main()
