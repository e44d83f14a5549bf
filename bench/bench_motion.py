"""Pose / gaze motion benchmarks on this machine: GFLOPs per denoiser call, and sampler
seconds per second of audio (DDPM-150 and DDIM-25, batch 1 and 32), tiny and official sizes.

    .venv/bin/python bench/bench_motion.py [--repeats 3] [--official-full]

A window is 150 frames (6 s of audio, the training length). The tiny size runs every sampler in
full. The official size (72.7 M parameters) times one jitted denoiser call per batch and, unless
``--official-full`` is given, reports sampler time as steps x call time (the scan adds no work:
each update is one call plus three elementwise ops), marked "(from calls)"; DDIM-25 at batch 1
is always run in full as a check of that extrapolation.
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

from gohd_jax.diffusion import samplers, windowing  # noqa: E402
from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig, count_params  # noqa: E402
from gohd_jax.train.tasks.motion_diffusion import denoiser_config  # noqa: E402
from bench_animator import best_of  # noqa: E402  (same folder; the shared timing helper)

WINDOW = 150
SECONDS = (WINDOW - 1) / 25.0  # new frames per window


def tiny_config():
    from configs import motion
    return denoiser_config(motion.get_config("pose_tiny").task)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--official-full", action="store_true", help="run every official-size sampler in full")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="parameter and activation dtype (bfloat16 for accelerators)")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    dtype = jnp.dtype(args.dtype)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}); dtype {args.dtype}; date {time.strftime('%Y-%m-%d')}")
    rows = []
    for name, cfg in (("tiny (configs/motion.py:pose_tiny)", tiny_config()),
                      ("official pose", MotionDenoiserConfig.pose())):
        model = MotionDenoiser(cfg, rngs=nnx.Rngs(0), param_dtype=dtype)
        graphdef, state = nnx.split(model)
        call = jax.jit(lambda s, x, lc, gc: nnx.merge(graphdef, s)(x, jnp.array([3.5]), lc, gc))
        for b in batches:
            x = jnp.zeros((b, WINDOW - 1, cfg.in_channels), dtype)
            lc = jnp.zeros((b, WINDOW - 1, cfg.local_dim), dtype)
            gc = jnp.zeros((b, cfg.global_dim), dtype)
            flops = call.lower(state, x, lc, gc).compile().cost_analysis().get("flops", float("nan"))
            t_call = best_of(lambda: call(state, x, lc, gc), args.repeats)
            row = {"model": name, "params": count_params(model) / 1e6, "batch": b,
                   "gflops": flops / 1e9 / b, "call": t_call}
            for method, steps in (("ddpm", 150), ("ddim", 25)):
                spec = samplers.SamplerSpec(method, steps)
                full = name.startswith("tiny") or args.official_full or (method == "ddim" and b == 1)
                if full:
                    ws = windowing.WindowSampler(model, spec=spec, residual=True, alignment="training")
                    key = jax.random.key(0)
                    t = best_of(lambda: ws(lc, gc.astype(jnp.float32), key), max(1, args.repeats - 1))
                    row[method] = (t / SECONDS / b, "")
                else:
                    row[method] = (steps * t_call / SECONDS / b, " (from calls)")
            rows.append(row)
            print(f"  measured {name} batch {b}", file=sys.stderr, flush=True)
    print("\n| model | params (M) | batch | GFLOPs / call / sample (150 frames) | denoiser call (s) "
          "| DDPM-150: s per s of audio per clip | DDIM-25: s per s of audio per clip |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:.2f} | {r['batch']} | {r['gflops']:.2f} | {r['call']:.4f} "
              f"| {r['ddpm'][0]:.4f}{r['ddpm'][1]} | {r['ddim'][0]:.4f}{r['ddim'][1]} |")


if __name__ == "__main__":
    main()
