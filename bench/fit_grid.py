"""The fit grid of BENCHMARKS.md ("Fit on accelerators"): `gohd-aot` over stages x targets x
precisions, one compile job per row, resumable, then the tables.

    .venv/bin/python bench/fit_grid.py                      # run what is missing, print the tables
    .venv/bin/python bench/fit_grid.py --groups=train,infer # only these groups
    .venv/bin/python bench/fit_grid.py --list               # the rows and whether each is done
    .venv/bin/python bench/fit_grid.py --tables             # print the tables of what is done
    .venv/bin/python bench/fit_grid.py --targets=v5e:4x4,8xH100 --stages=pose,gaze  # a part of it

Each row runs `gohd-aot ... --json=OUT/ROW.json` in a subprocess (the CUDA plugin's environment
must be set before JAX starts) and is skipped when its JSON exists, so an interrupted grid goes
on where it stopped. OUT defaults to `bench/results/fit_grid/`, which is committed: the grid takes
longer than one session on a 2-core machine, and a row's JSON (about 3 KB) is what lets the next
session, on another machine, go on from it. Rows compiled before 2026-12-07 kept their JSON in the
ignored `workdir/`, so they are only in BENCHMARKS.md's tables; name the groups, targets and
stages still missing (BENCHMARKS.md lists them) rather than running the whole grid again.
A row that does not fit still writes its JSON (gohd-aot exits 1); a row that
fails otherwise leaves `OUT/ROW.err` with the end of its stderr and is retried next time.
Compiles take seconds (inference, small stages) to about 6 minutes (the official animator's
train step for a TPU slice) each on a 2-core machine; the whole grid is a few hours there.

Groups, in the order they run:
  train       every stage's train step at official size on v5e:4x4 and one node of 8 H100s,
              float32 + remat none and bfloat16 + remat blocks
  infer       every stage's inference programs on v5e:4x4, v5p:4x4x4, v6e:8x8, 8 H100s and two
              nodes of 8 H100s, float32 and bfloat16 (render at 64 frames per chip)
  render256   the renderer at 256 frames per chip, the same targets, bfloat16
  train-more  the animator's train step on v5p:4x4x4, v6e:8x8 and two nodes of 8 H100s
  max-batch   the largest global batch of each stage's train step (bfloat16 + remat blocks) on
              v5e:4x4 and 8 H100s, to within 10% (`--max-batch --max-batch-resolution=0.1`)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {  # name -> gohd-aot flags
    "v5e:4x4": ["--topology=v5e:4x4"],
    "v5p:4x4x4": ["--topology=v5p:4x4x4"],
    "v6e:8x8": ["--topology=v6e:8x8"],
    "8xH100": ["--gpu=h100", "--topology=1x1x8"],
    "2x8xH100": ["--gpu=h100", "--topology=1x2x8"],
}
STAGES = {  # name -> (config, inference programs)
    "animator": ("configs/animator.py:official", "encode,render"),
    "pose": ("configs/motion.py:pose", "motion_ddim25,motion_ddpm150"),
    "gaze": ("configs/motion.py:gaze", "motion_ddim25,motion_ddpm150"),
    "stage1": ("configs/expression.py:stage1", "expression"),
    "stage2": ("configs/expression.py:stage2", "expression"),
}
MODES = {"float32": ("float32", "none"), "bf16": ("bfloat16", "none"), "bf16+blocks": ("bfloat16", "blocks")}


def _batch_flags(stage: str, target: str) -> list[str]:
    """The release's batch where it divides over the chips; else the smallest multiple that does."""
    if stage in ("pose", "gaze") and target == "v5e:4x4":
        return ["--config.batch_size=16"]  # the release's 8 does not divide over 16 chips
    return []


@dataclass(frozen=True)
class Row:
    key: str
    group: str
    stage: str
    target: str
    mode: str
    flags: tuple[str, ...]

    def command(self, out: Path) -> list[str]:
        precision, remat = MODES[self.mode]
        return [sys.executable, str(ROOT / "launch" / "aot_compile.py"), f"--config={STAGES[self.stage][0]}",
                *TARGETS[self.target], f"--config.precision={precision}", f"--config.remat={remat}",
                *self.flags, f"--json={out / (self.key + '.json')}"]


def grid() -> list[Row]:
    rows: list[Row] = []

    def add(group, stage, target, mode, *flags):
        key = "-".join([group, stage, target.replace(":", "_"), mode.replace("+", "_")])
        rows.append(Row(key, group, stage, target, mode, tuple(flags) + tuple(_batch_flags(stage, target))))

    for mode in ("float32", "bf16+blocks"):
        for target in ("v5e:4x4", "8xH100"):
            for stage in ("pose", "gaze", "stage1", "stage2", "animator"):
                add("train", stage, target, mode, "--programs=train")
    for stage in STAGES:
        for target in TARGETS:
            for mode in ("float32", "bf16"):
                add("infer", stage, target, mode, f"--programs={STAGES[stage][1]}")
    for target in TARGETS:
        add("render256", "animator", target, "bf16", "--programs=render", "--render-batch=256")
    for target in ("v5p:4x4x4", "v6e:8x8", "2x8xH100"):
        for mode in ("bf16+blocks", "float32"):
            add("train-more", "animator", target, mode, "--programs=train")
    for target in ("8xH100", "v5e:4x4"):
        for stage in ("pose", "gaze", "stage1", "stage2", "animator"):
            # The animator's train row at batch 64 needs 3.5 GiB of v5e's 16: start there at 4x,
            # which saves a TPU compile of about 1,000 s.
            start = ("--max-batch-start=256",) if (stage, target) == ("animator", "v5e:4x4") else ()
            add("max-batch", stage, target, "bf16+blocks", "--programs=train", "--max-batch",
                "--max-batch-resolution=0.1", *start)
    return rows


def run(rows: list[Row], out: Path, timeout_s: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if not (out / f"{r.key}.json").exists()]
    print(f"fit_grid: {len(rows) - len(todo)} of {len(rows)} rows done; running {len(todo)}", file=sys.stderr)
    for i, row in enumerate(todo, 1):
        t0 = time.perf_counter()
        print(f"fit_grid: [{i}/{len(todo)}] {row.key} ...", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(row.command(out), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
            ok = proc.returncode in (0, 1) and (out / f"{row.key}.json").exists()
            err = proc.stderr
        except subprocess.TimeoutExpired as e:
            ok, err = False, f"timed out after {timeout_s} s\n{(e.stderr or b'')[-2000:]!r}"
        took = time.perf_counter() - t0
        if ok:
            (out / f"{row.key}.err").unlink(missing_ok=True)
        else:
            (out / f"{row.key}.err").write_text(err[-4000:])
        print(f"fit_grid:   {'done' if ok else 'FAILED (see .err)'} in {took:.0f} s", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- tables

def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2 ** 30:.2f}"


def _gb(b) -> str:
    return "-" if b is None else f"{b / 1e9:.2f}"


def _bound(rec) -> str:
    t = rec.get("step_time_bound_s")
    return "-" if t is None else (f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.1f} s")


def _collectives(rec) -> str:
    parts = [f"{op} {c['count']}x {c['bytes'] / 2 ** 20:.0f} MiB" for op, c in (rec.get("collectives") or {}).items()
             if c["count"]]
    return ", ".join(parts) or "none"


def _load(out: Path, rows: list[Row]):
    for row in rows:
        path = out / f"{row.key}.json"
        if path.exists():
            data = json.loads(path.read_text())
            for rec in data["programs"]:
                yield row, data["target"], rec


def tables(rows: list[Row], out: Path) -> str:
    lines: list[str] = []
    done = list(_load(out, rows))
    twin = lambda t: " (CPU twin)" if t["platform"] == "gpu" else ""  # noqa: E731

    train = [(r, t, p) for r, t, p in done if r.group in ("train", "train-more")]
    if train:
        lines += ["### Train steps at official size", "",
                  "| stage | target | precision, remat | global batch | GFLOPs / step | bytes / chip | "
                  "peak / chip | fits | collectives | bound / step | binds | compile here |",
                  "|---|---|---|---:|---:|---:|---:|---|---|---:|---|---:|"]
        for r, t, p in train:
            lines.append(f"| {r.stage} | {r.target} | {p['precision']}, {p['remat']} | {p['batch']} | "
                         f"{_num(p['gflops_total'], ',.0f')} | {_gb(p['bytes_accessed_per_chip'])} GB{twin(t)} | "
                         f"{_gib(p['peak_bytes_per_chip'])} GiB of {_gib(p['hbm_bytes_per_chip'])} | "
                         f"{'yes' if p['fits'] else '**no**'} | {_collectives(p)} | {_bound(p)} | "
                         f"{p.get('bound_by', '-')} | {p['compile_s']:.0f} s |")
        lines.append("")
    infer = [(r, t, p) for r, t, p in done if r.group in ("infer", "render256")]
    if infer:
        lines += ["### Inference programs (data-parallel over every chip)", "",
                  "| stage | program | target | precision | per chip | GFLOPs / chip | bytes / chip | peak / chip | "
                  "fits | bound / call | per frame: GFLOPs, bytes | frames/s per chip (bound) | binds |",
                  "|---|---|---|---|---:|---:|---:|---:|---|---:|---|---:|---|"]
        for r, t, p in infer:
            per_frame = fps = "-"
            if p.get("gflops_per_frame"):
                per_frame = f"{p['gflops_per_frame']:.1f}, {_gb(p['bytes_per_frame'])} GB"
                if p.get("step_time_bound_s"):
                    fps = f"{p['batch'] / t['chips'] / p['step_time_bound_s']:,.0f}"
            lines.append(f"| {r.stage} | {p['name']} | {r.target} | {p['precision']} | {p['batch'] // t['chips']} | "
                         f"{_num(p['gflops_per_chip'], ',.1f')} | {_gb(p['bytes_accessed_per_chip'])} GB{twin(t)} | "
                         f"{_gib(p['peak_bytes_per_chip'])} GiB of {_gib(p['hbm_bytes_per_chip'])} | "
                         f"{'yes' if p['fits'] else '**no**'} | {_bound(p)} | {per_frame} | {fps} | "
                         f"{p.get('bound_by', '-')} |")
        lines.append("")
    mb = [(r, t, p) for r, t, p in done if r.group == "max-batch"]
    if mb:
        lines += ["### Largest global batch of the train step (bfloat16, remat blocks)", "",
                  "| stage | target | largest batch that fits (per chip) | peak / chip there | "
                  "next tried (does not fit) | compiles |", "|---|---|---:|---:|---:|---:|"]
        for r, t, p in mb:
            nxt = p.get("max_batch_next_tried")
            lines.append(f"| {r.stage} | {r.target} | {p['max_batch']:,} ({p['max_batch'] // t['chips']}) | "
                         f"{_gib(p['peak_bytes_per_chip'])} GiB of {_gib(p['hbm_bytes_per_chip'])} | "
                         f"{'-' if nxt is None else f'{nxt:,}'} | {p.get('max_batch_compiles', '-')} |")
        lines.append("")
    missing = [r.key for r in rows if not (out / f"{r.key}.json").exists()]
    if missing:
        lines.append(f"Not compiled yet ({len(missing)} rows): " + ", ".join(missing))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fit_grid",
                    help="folder of the rows' JSON (default: bench/results/fit_grid, committed)")
    ap.add_argument("--groups", default="train,infer,render256,train-more,max-batch", help="comma-separated groups")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets (default: all)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages (default: all)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per row")
    ap.add_argument("--list", action="store_true", help="list the rows and whether each is done")
    ap.add_argument("--tables", action="store_true", help="only print the tables of the rows done")
    args = ap.parse_args(argv)
    groups = args.groups.split(",")
    targets, stages = args.targets.split(","), args.stages.split(",")
    rows = [r for r in grid() if r.group in groups and r.target in targets and r.stage in stages]
    if args.list:
        for r in rows:
            print(f"{'done' if (args.out / f'{r.key}.json').exists() else '    '}  {r.key}")
        return
    if not args.tables:
        run(rows, args.out, args.timeout)
    print(tables(rows, args.out))


if __name__ == "__main__":
    main()
