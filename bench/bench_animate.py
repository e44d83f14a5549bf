"""gohd animate end to end: frames/s and latency to the first frame, by batch of clips, split by
stage (features, expression, motion, rendering, encoding).

    python bench/bench_animate.py                         # tiny random-init models, 64 px
    python bench/bench_animate.py --size official --batches 1 --seconds 2 --sampler ddim --steps 10

Every clip is ``--seconds`` of synthetic speech; the engine is built and warmed up (compiled) on
the same shapes first, so the table shows steady-state time; the compile time is printed apart.
Random weights: the arithmetic and the time are the real ones. Prints a markdown table.

Manifest mode (``gohd animate --manifest``, batch inference), whole runs of the command in fresh
processes, optionally of several checkouts side by side (``--code LABEL=DIR``, e.g. the commit
before a change in a ``git worktree``):

    python bench/bench_animate.py --manifest-rows 50 500 --code before=../gohd_before --code after=.

Rows are 0.2-0.9 s of speech on one portrait. Per run: clips/s and frames/s (from the engine being
built to the last clip), peak RSS of the process, and the fraction of that time the device loop
waited for host input: the time outside ``Animate.run`` (reading, decoding, cropping, waiting for
the next prepared batch) plus the audio features computed inside it, read through a wrapper of
``Animate.run`` (the same for any checkout). Encoding inside ``run`` does not count as waiting,
whether it overlaps the device (after) or not (before).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
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


# Runs ``gohd animate`` in this process with Animate.__init__ / Animate.run wrapped to time the
# engine; argv[1] is where to write the figures, the rest is the command line.
_CHILD = """
import json, os, resource, sys, time
from gohd_jax.infer import animate as A, cli
ready, busy, init, run = [None], [0.0], A.Animate.__init__, A.Animate.run
def timed_init(self, *a, **k):
    init(self, *a, **k)
    ready[0] = time.perf_counter()
def timed_run(self, *a, **k):
    t0 = time.perf_counter()
    drives, times = run(self, *a, **k)
    busy[0] += time.perf_counter() - t0 - times.seconds.get("features", 0.0)
    return drives, times
A.Animate.__init__, A.Animate.run = timed_init, timed_run
code = cli.main(sys.argv[2:])
wall = time.perf_counter() - ready[0]
json.dump({"code": code, "wall_s": wall, "busy_s": busy[0], "module": A.__file__,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, open(sys.argv[1], "w"))
"""


def manifest_bench(a) -> None:
    import json
    import subprocess

    import soundfile as sf
    from PIL import Image

    from gohd_jax.infer.bundle import random_bundle, save_bundle

    codes = [c.split("=", 1) if "=" in c else (Path(c).name, c) for c in (a.code or ["this=."])]
    root = Path(tempfile.mkdtemp(prefix="gohd_manifest_bench_"))
    bundle = save_bundle(random_bundle(a.size), root / "bundle")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(root / "face.png")
    lengths = (0.2, 0.44, 0.68, 0.92)
    for k, sec in enumerate(lengths):
        sf.write(str(root / f"a{k}.wav"), speech(sec, k), 16000)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on cpu; {a.size} models, rows of {'/'.join(map(str, lengths))} s speech, "
          f"generated pose and gaze ({a.sampler.upper()}{'' if a.sampler == 'ddpm' else f'-{a.steps}'}), "
          f"--batch-clips {a.batch_clips}, --render-batch {a.render_batch}")
    print("| code | rows | frames | wall s | clips/s | frames/s | peak RSS MB | device waited for input |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in a.manifest_rows:
        man = root / f"jobs{n}.csv"
        man.write_text("\n".join(["image,audio,out"] + [f"face.png,a{k % 4}.wav,out{n}/c{k}.mp4"
                                                          for k in range(n)]) + "\n")
        frames = sum(math.ceil(lengths[k % 4] * 25) for k in range(n))
        for label, code in codes:
            out = root / f"out{n}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            figures = root / "figures.json"
            cmd = [sys.executable, "-c", _CHILD, str(figures), "animate", "--manifest", str(man), "--checkpoint",
                   str(bundle), "--sampler", a.sampler, "--steps", str(a.steps), "--batch-clips", str(a.batch_clips),
                   "--render-batch", str(a.render_batch), "--no-compile-cache"]
            env = dict(os.environ, PYTHONPATH=str(Path(code).resolve()), JAX_PLATFORMS="cpu")
            proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {label} | {n} | failed: {proc.stderr.strip().splitlines()[-1][:100]} |||||")
                continue
            f = json.loads(figures.read_text())
            if not Path(f["module"]).resolve().is_relative_to(Path(code).resolve()):
                raise SystemExit(f"{label}: ran {f['module']}, not the checkout in {code}")
            wait = 1.0 - f["busy_s"] / f["wall_s"]
            print(f"| {label} | {n} | {frames} | {f['wall_s']:.1f} | {n / f['wall_s']:.2f} | "
                  f"{frames / f['wall_s']:.1f} | {f['peak_rss_mb']:.0f} | {100 * wait:.0f}% |", flush=True)
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "official"), default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--render-batch", type=int, default=32)
    p.add_argument("--manifest-rows", type=int, nargs="+",
                   help="benchmark gohd animate --manifest on manifests of these many rows instead")
    p.add_argument("--code", action="append", metavar="LABEL=DIR",
                   help="(manifest mode) a checkout to run; repeat to compare side by side (default: this one)")
    p.add_argument("--batch-clips", type=int, default=16, help="(manifest mode) clips per batch")
    a = p.parse_args()
    if a.manifest_rows:
        return manifest_bench(a)
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
