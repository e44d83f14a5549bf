"""Animator benchmarks on this machine: official-size (256 px) forward at batch 1
(source encoding once, rendering per frame) and tiny-size GAN train steps/s.

    .venv/bin/python bench/bench_animator.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}); date {time.strftime('%Y-%m-%d')}")
    print("\n| model | params (M) | encode source, batch 1 (s) | render 1 frame (s) | render 8 frames, one encoding (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, cfg in (("official 256 px", AnimatorConfig()), ("tiny 64 px", AnimatorConfig.tiny())):
        model = SemanticAnimator(cfg, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        n = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))) / 1e6
        src = jnp.zeros((1, cfg.size, cfg.size, 3))
        encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_source(x))
        render = jax.jit(lambda s, w, f, sem: nnx.merge(graphdef, s).render(w, f, sem)["rgb"][0])
        w, feats = encode(state, src)
        sem1, sem8 = jnp.zeros((1, 27, 72)), jnp.zeros((8, 27, 72))
        t_enc = best_of(lambda: encode(state, src), args.repeats)
        t_r1 = best_of(lambda: render(state, w, feats, sem1), args.repeats)
        t_r8 = best_of(lambda: render(state, w, feats, sem8), args.repeats)
        print(f"| {name} | {n:.2f} | {t_enc:.3f} | {t_r1:.3f} | {t_r8:.3f} |")


if __name__ == "__main__":
    main()
