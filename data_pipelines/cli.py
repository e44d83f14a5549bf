"""``gohd-data``: inspect clip-record datasets.

    gohd-data info DIR                 summary of the manifest
    gohd-data verify DIR               read every record, check hashes and shapes
    gohd-data sample DIR --stage S     build stage S's Grain pipeline and print one batch's shapes
    gohd-data bench DIR --stage S      samples/s and ArrayRecord bytes read per sample of stage S
    gohd-data migrate OLD NEW          convert a schema-1 dataset (one record per clip) to schema 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from data_pipelines import records, schema
from data_pipelines.bench import STAGES as BENCH_STAGES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gohd-data", description="Inspect, measure and convert GoHD clip-record "
                                "datasets (ArrayRecord shards + manifest.json), as written by gohd-synth "
                                "and gohd-preprocess.")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the dataset summary")
    info.add_argument("dir", help="dataset folder (holds manifest.json)")
    verify = sub.add_parser("verify", help="read every record; check hashes and field shapes")
    verify.add_argument("dir")
    sample = sub.add_parser("sample", help="print the shapes of one batch of a stage's pipeline")
    sample.add_argument("dir")
    sample.add_argument("--stage", choices=("animator", "motion", "expression"), required=True)
    sample.add_argument("--batch-size", type=int, default=4)
    sample.add_argument("--window", type=int, default=None, help="window length (stage default if omitted)")
    sample.add_argument("--workers", type=int, default=0)
    sample.add_argument("--split", choices=("train", "heldout", "all"), default="train")
    bench = sub.add_parser("bench", help="samples/s and bytes read per sample of a stage's pipeline",
                           description="Measures a stage's Grain pipeline: samples/s after a warm-up and "
                                       "the ArrayRecord bytes each sample read (counted at the read).")
    bench.add_argument("dir")
    bench.add_argument("--stage", choices=tuple(BENCH_STAGES), required=True,
                       help="sync: the pixel expert's samples (faces); sync_mouth: the coefficient expert's")
    bench.add_argument("--workers", type=int, default=0, help="Grain worker processes (default 0)")
    bench.add_argument("--batches", type=int, default=30, help="batches timed, after 3 warm-up (default 30)")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--read-latency-ms", type=float, default=0.0,
                       help="sleep before every record read, e.g. 20 for a bucket (default 0)")
    bench.add_argument("--read-threads", type=int, default=1, help="Grain read threads per process (default 1)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table row")
    migrate = sub.add_parser("migrate", help="convert a schema-1 dataset to this version's layout",
                             description="Writes OLD's clips to NEW in schema 2 (records per 2 s time chunk "
                                         "and per frame, so a sample reads only what it uses); arrays and "
                                         "JPEG bytes are carried over unchanged, OLD is only read. Rerunning "
                                         "the same command resumes.")
    migrate.add_argument("old", help="the schema-1 dataset folder")
    migrate.add_argument("new", help="the folder to write (created; a finished one is kept)")
    migrate.add_argument("--workers", type=int, default=0, help="encoding processes (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "info":
            print(records.summarize(records.load_manifest(args.dir)))
        elif args.command == "verify":
            report = records.verify_dataset(args.dir)
            for i, msg in report["bad"]:
                print(f"bad record {i}: {msg}")
            for msg in report["shard_errors"]:
                print(f"bad shard: {msg}")
            print(f"{report['clips']} clips checked, {len(report['bad'])} bad records, "
                  f"{len(report['shard_errors'])} bad shards")
            return 1 if report["bad"] or report["shard_errors"] else 0
        elif args.command == "migrate":
            from data_pipelines import migrate
            print(records.summarize(migrate.migrate(args.old, args.new, workers=args.workers)))
        elif args.command == "bench":
            from data_pipelines import bench
            r = bench.bench(args.dir, args.stage, workers=args.workers, batches=args.batches,
                            batch_size=args.batch_size, read_latency_ms=args.read_latency_ms,
                            read_threads=args.read_threads)
            print(json.dumps(r) if args.json else f"{bench.HEADER}\n{bench.format_row(r)}")
        else:
            from data_pipelines import pipelines
            ds = pipelines.make_dataset(args.stage, args.dir, window=args.window, split=args.split,
                                        shard_index=0, shard_count=1)
            batch = next(pipelines.make_iterator(ds, args.batch_size, num_workers=args.workers))
            for k, v in batch.items():
                print(f"{k:20s} {str(v.dtype):8s} {list(v.shape)}")
    except (records.DatasetError, schema.BadRecordError, ValueError) as e:
        print(f"gohd-data: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
