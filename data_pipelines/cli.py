"""``gohd-data``: inspect clip-record datasets.

    gohd-data info DIR                 summary of the manifest
    gohd-data verify DIR               read every record, check hashes and shapes
    gohd-data sample DIR --stage S     build stage S's Grain pipeline and print one batch's shapes
"""

from __future__ import annotations

import argparse
import logging
import sys

from data_pipelines import records, schema


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gohd-data", description="Inspect GoHD clip-record datasets "
                                "(ArrayRecord shards + manifest.json), as written by gohd-synth.")
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
