"""gohd animate end to end: frames/s and latency to the first frame, by batch of clips, split by
stage (features, expression, motion, rendering, encoding).

    python bench/bench_animate.py                         # tiny random-init models, 64 px
    python bench/bench_animate.py --size official --batches 1 --seconds 2 --sampler ddim --steps 10

Every clip is ``--seconds`` of synthetic speech; the engine is built and warmed up (compiled) on
the same shapes first, so the table shows steady-state time; the compile time is printed apart.
Random weights: the arithmetic and the time are the real ones. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def speech(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)
    return (0.3 * env * np.sin(2 * np.pi * 170 * t)).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "official"), default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--render-batch", type=int, default=32)
    a = p.parse_args()
    from gohd_jax.infer.animate import Animate, ClipJob, Sampling
    from gohd_jax.infer.bundle import random_bundle
    from gohd_jax.infer.mp4 import Mp4Writer

    bundle = random_bundle(a.size)
    s = bundle.image_size
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}; {a.size} models ({s} px), {a.seconds:g} s clips, "
          f"{a.sampler.upper()}{'' if a.sampler == 'ddpm' else f'-{a.steps}'}, render batch {a.render_batch}")
    print("| clips | frames | total s | frames/s | first frame s | features | expression | motion | rendering "
          "| encoding | compile s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    src = np.random.default_rng(0).integers(0, 256, (s, s, 3), dtype=np.uint8)
    for b in a.batches:
        engine = Animate(bundle, sampling=Sampling(a.sampler, a.steps), render_batch=a.render_batch)
        jobs = [ClipJob(f"c{i}", src, np.zeros(72, np.float32), np.full(21, 0.25, np.float32),
                        speech(a.seconds, i), seed=i) for i in range(b)]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            writers = [Mp4Writer(Path(tmp) / f"w{i}.mp4", s, audio=j.wav) for i, j in enumerate(jobs)]
            engine.run(jobs, writers)
            [w.close() for w in writers]
            compile_s = time.perf_counter() - t0
            writers = [Mp4Writer(Path(tmp) / f"{i}.mp4", s, audio=j.wav) for i, j in enumerate(jobs)]
            t0 = time.perf_counter()
            drives, times = engine.run(jobs, writers)
            [w.close() for w in writers]
            total = time.perf_counter() - t0
        n = sum(len(d["descriptors"]) for d in drives)
        st = times.seconds
        cells = " | ".join(f"{st.get(k, 0.0):.2f}"
                           for k in ("features", "expression", "motion", "rendering", "encoding"))
        print(f"| {b} | {n} | {total:.2f} | {n / total:.1f} | {times.first_frame_s:.2f} | {cells} | "
              f"{compile_s - total:.1f} |")


if __name__ == "__main__":
    main()
