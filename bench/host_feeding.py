"""How many samples/s each hardware configuration needs per host, and how many Grain worker
processes supply them: `gohd-aot`'s step-time bounds (the fit grid's train rows) against the
pipelines' measured rates per core (`bench/bench_data_layout.py --json`). Prints a Markdown table.

    .venv/bin/python bench/host_feeding.py --grid bench/results/fit_grid --rates RATES.json [--rates ...]

A step-time bound is a lower bound (the larger of FLOPs / peak and bytes / bandwidth), so the
samples/s it gives are an upper bound on what the chips can consume: size the input for it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

GRID = Path(__file__).resolve().parent / "results" / "fit_grid"  # where bench/fit_grid.py writes

# Chips per host of each topology's machines (Cloud TPU VM shapes; a DGX/HGX node for H100s).
CHIPS_PER_HOST = {"TPU v5e": 4, "TPU v5p": 4, "TPU v6e": 4, "H100": 8}
GRID_TO_BENCH = {"animator": "animator", "pose": "motion", "gaze": "motion", "stage1": "expression",
                 "stage2": "expression"}


def chips_per_host(chip: str) -> int:
    for k, v in CHIPS_PER_HOST.items():
        if k in chip:
            return v
    raise ValueError(f"no host shape for chip {chip!r}")


def load_rates(paths: list[str]) -> dict[tuple[str, int], tuple[float, float]]:
    """{(bench stage, frame size): (samples/s on one core (0 workers), bytes read per sample)}."""
    rates = {}
    for p in paths:
        for r in json.loads(Path(p).read_text()):
            if r["workers"] == 0 and not r["read_latency_ms"]:
                rates[(r["stage"], int(r["size"]))] = (r["samples_per_s"], r["bytes_per_sample"])
    return rates


def rows(grid: Path, rates: dict, size: int) -> list[dict]:
    out = []
    for f in sorted(grid.glob("train-*.json")):  # train-STAGE-... and train-more-STAGE-...
        stage = f.name.removeprefix("train-").removeprefix("more-").split("-")[0]
        rec = next(p for p in json.loads(f.read_text())["programs"] if p["kind"] == "train")
        hosts = max(1, rec["chips"] // chips_per_host(rec["chip"]))
        need = rec["batch"] / rec["step_time_bound_s"] / hosts
        rate, per_sample = rates.get((GRID_TO_BENCH[stage], size), (None, None))
        out.append({"mb_per_s": need * per_sample / 1e6 if per_sample else None, "stage": stage,
                    "topology": rec["topology"], "chips": rec["chips"], "hosts": hosts,
                    "precision": rec["precision"], "remat": rec["remat"], "batch": rec["batch"],
                    "bound_s": rec["step_time_bound_s"], "need_per_host": need, "rate_per_core": rate,
                    "workers": math.ceil(need / rate) if rate else None})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default=str(GRID), help="the fit grid's JSON folder (default: bench/results/fit_grid)")
    p.add_argument("--rates", action="append", required=True, help="bench_data_layout.py --json output")
    p.add_argument("--size", type=int, default=256, help="frame size of the rates to use (default 256)")
    args = p.parse_args()
    print("| stage | hardware | hosts | precision, remat | global batch | step bound (ms) | samples/s per host "
          "(upper bound) | MB/s read per host | pipeline samples/s per core | worker processes per host |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows(Path(args.grid), load_rates(args.rates), args.size):
        rate = f"{r['rate_per_core']:.0f}" if r["rate_per_core"] else "-"
        print(f"| {r['stage']} | {r['topology']} ({r['chips']} chips) | {r['hosts']} | "
              f"{r['precision']}, {r['remat']} | "
              f"{r['batch']} | {r['bound_s'] * 1e3:.1f} | {r['need_per_host']:.0f} | "
              f"{r['mb_per_s']:.0f} | {rate} | "
              f"{r['workers'] if r['workers'] is not None else '-'} |")


if __name__ == "__main__":
    main()
