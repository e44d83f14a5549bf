"""``gohd-synth``: writes a synthetic talking-head dataset as clip-record shards.

Example::

    gohd-synth --out data/synth --clips 64 --seconds 6 --size 64 --seed 0

Rerunning the same command resumes: finished shards are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
import time

from data_pipelines import records
from data_pipelines.synthetic.generator import SynthConfig, generate_clip


def write_synthetic_dataset(out, cfg: SynthConfig, clips: int, *, clips_per_shard: int = 16,
                            jpeg_quality: int = 95, workers: int = 2) -> dict:
    """Writes ``clips`` synthetic clips of ``cfg`` to ``out`` (resumable); returns the manifest."""
    info = {"generator": "gohd-synth", **dataclasses.asdict(cfg)}
    return records.write_dataset(out, clips, functools.partial(generate_clip, cfg),
                                 clips_per_shard=clips_per_shard, jpeg_quality=jpeg_quality,
                                 workers=workers, dataset_info=info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gohd-synth",
        description="Generate the synthetic talking-head dataset (procedural faces driven by known "
                    "72-d descriptors, speech-like audio, blinks and gaze) as ArrayRecord shards plus "
                    "manifest.json. Deterministic by seed; rerunning resumes.")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--clips", type=int, default=32, help="number of clips (default 32)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each clip in seconds (default 6)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels, 32..256 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--identities", type=int, default=None,
                   help="number of distinct faces; clip i uses face i %% N (default: clips / 4, at least 2)")
    p.add_argument("--clips-per-shard", type=int, default=16, help="records per ArrayRecord shard (default 16)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the frames, 1..100 (default 95)")
    p.add_argument("--workers", type=int, default=2, help="generator processes; 0 = in this process (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    errors = []
    if args.clips < 1:
        errors.append("--clips must be >= 1")
    if not 0.2 <= args.seconds <= 600:
        errors.append("--seconds must be in [0.2, 600]")
    if not 32 <= args.size <= 256:
        errors.append("--size must be in [32, 256]")
    if not 1 <= args.jpeg_quality <= 100:
        errors.append("--jpeg-quality must be in [1, 100]")
    if args.identities is not None and args.identities < 1:
        errors.append("--identities must be >= 1")
    if errors:
        print("gohd-synth: error: " + "; ".join(errors), file=sys.stderr)
        return 2
    identities = args.identities or max(2, args.clips // 4)
    cfg = SynthConfig(size=args.size, seconds=args.seconds, num_identities=identities, seed=args.seed)
    t0 = time.perf_counter()
    try:
        manifest = write_synthetic_dataset(args.out, cfg, args.clips, clips_per_shard=args.clips_per_shard,
                                           jpeg_quality=args.jpeg_quality, workers=args.workers)
    except records.DatasetError as e:
        print(f"gohd-synth: error: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    print(records.summarize(manifest))
    print(f"written to  {args.out} in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
