"""Data benchmarks: synthetic generator clips/s, and each Grain pipeline's samples/s
with 0, 1 and 2 worker processes. Prints Markdown tables for BENCHMARKS.md.

    .venv/bin/python bench/bench_data.py [--clips 16] [--seconds 8] [--size 64] [--batches 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_pipelines import pipelines, schema  # noqa: E402
from data_pipelines.synthetic.cli import write_synthetic_dataset  # noqa: E402
from data_pipelines.synthetic.generator import SynthConfig, generate_clip  # noqa: E402


def bench_generator(size: int, seconds: float, clips: int, workers: int, tmp: Path) -> tuple[float, float]:
    """(clips/s of generate_clip alone in this process, clips/s of the full writer with `workers`)."""
    cfg = SynthConfig(size=size, seconds=seconds, num_identities=4, seed=1)
    t0 = time.perf_counter()
    n_alone = max(2, clips // 4)
    for i in range(n_alone):
        generate_clip(cfg, i)
    alone = n_alone / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    write_synthetic_dataset(tmp / f"gen-{size}-{workers}", cfg, clips, clips_per_shard=8, workers=workers)
    return alone, clips / (time.perf_counter() - t0)


def bench_pipeline(stage: str, data_dir: Path, workers: int, batch: int, batches: int) -> float:
    window = min(pipelines.DEFAULT_WINDOW[stage], 150)
    ds = pipelines.make_dataset(stage, data_dir, window=window, split="all", shard_index=0, shard_count=1)
    it = pipelines.make_iterator(ds, batch, num_workers=workers)
    for _ in range(5):  # start-up: worker spawn, first reads
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=100)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"date {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"\n### Synthetic generator ({args.seconds:g} s clips = {int(args.seconds * schema.FPS)} frames, "
              f"{args.clips} clips, JPEG q95, both mels)\n")
        print("| size | generate_clip only, 1 process (clips/s) | writer, 0 workers (clips/s) "
              "| writer, 2 workers (clips/s) |")
        print("|---:|---:|---:|---:|")
        for size in (64, 256):
            n = args.clips if size == 64 else max(4, args.clips // 6)
            alone, w0 = bench_generator(size, args.seconds, n, 0, tmp)
            _, w2 = bench_generator(size, args.seconds, n, 2, tmp)
            print(f"| {size} | {alone:.2f} | {w0:.2f} | {w2:.2f} |")

        data = tmp / "pipes"
        cfg = SynthConfig(size=args.size, seconds=args.seconds, num_identities=4, seed=2)
        write_synthetic_dataset(data, cfg, args.clips, clips_per_shard=8, workers=2)
        print(f"\n### Grain pipelines (batch {args.batch}, {args.size} px, {args.batches} batches after 5 warm-up)\n")
        print("| stage | window | 0 workers (samples/s) | 1 worker | 2 workers |")
        print("|---|---:|---:|---:|---:|")
        for stage in pipelines.STAGES:
            rates = [bench_pipeline(stage, data, w, args.batch, args.batches) for w in (0, 1, 2)]
            print(f"| {stage} | {pipelines.DEFAULT_WINDOW[stage]} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
