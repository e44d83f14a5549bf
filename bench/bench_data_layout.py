"""Every stage's pipeline on one synthetic dataset: samples/s and ArrayRecord bytes read per
sample, 0/1/2 worker processes (``gohd-data bench`` for each), as a Markdown table.

    .venv/bin/python bench/bench_data_layout.py --size 256 --seconds 8 --clips 8 [--json FILE]

The dataset is written in the layout this checkout writes (``data_pipelines.schema``), so running
it before and after a layout change gives the old/new columns of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_pipelines import bench, schema  # noqa: E402
from data_pipelines.synthetic.cli import write_synthetic_dataset  # noqa: E402
from data_pipelines.synthetic.generator import SynthConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--stages", default=",".join(bench.STAGES))
    p.add_argument("--read-latency-ms", type=float, default=0.0)
    p.add_argument("--read-threads", type=int, default=1)
    p.add_argument("--data", default="", help="an existing dataset folder (default: write one)")
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"date {time.strftime('%Y-%m-%d')}; schema v{schema.SCHEMA_VERSION}")
    with tempfile.TemporaryDirectory() as d:
        data = Path(args.data) if args.data else Path(d) / "data"
        if not args.data:
            write_synthetic_dataset(data, SynthConfig(size=args.size, seconds=args.seconds, num_identities=4, seed=2),
                                    args.clips, clips_per_shard=8, workers=2)
        size = sum(f.stat().st_size for f in data.glob("*.array_record"))
        print(f"\n{args.clips} clips of {args.seconds:g} s at {args.size} px, {size / 2**20:.1f} MiB of shards; "
              f"batch 8, {args.batches} batches after 3 warm-up\n")
        print(bench.HEADER)
        rows = []
        for stage in args.stages.split(","):
            for w in (int(x) for x in args.workers.split(",")):
                r = bench.bench(data, stage, workers=w, batches=args.batches, read_latency_ms=args.read_latency_ms,
                                read_threads=args.read_threads)
                r.update(size=args.size, seconds=args.seconds, schema=schema.SCHEMA_VERSION)
                rows.append(r)
                print(bench.format_row(r), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
