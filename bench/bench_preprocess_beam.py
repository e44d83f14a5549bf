"""gohd-preprocess's two drivers side by side: the local driver, and the Beam pipeline on
DirectRunner with 1 and with 2 worker processes, each run as the CLI a user types (wall time from
launch to exit, start-up included), on the same videos, into fresh outputs.

    python bench/bench_preprocess_beam.py                 # 4 cuts of 5 s of the real example clips
    python bench/bench_preprocess_beam.py --seconds 3 --cuts 1

The estimators are the ported ResNet-50s with weights rebuilt from the reference manifests (random
values, the real arithmetic and time). One JAX compilation cache is shared by every run and warmed
first, so no row pays the estimators' compile. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from gohd_jax import shared_data  # noqa: E402


def _need(*parts):
    p = shared_data.shared_path(*parts)
    if p is None:
        sys.exit(shared_data.describe_missing(*parts))
    return p


def make_inputs(tmp: Path, seconds: float, cuts: int) -> list[str]:
    """``cuts`` pieces of ``seconds`` from each example video, and the estimators' weights as .npz."""
    from data_pipelines.video import preprocess as pp
    from gohd_jax.interop import oracle_weights as ow
    from tests.test_preprocess import _read, write_video

    src = tmp / "videos"
    src.mkdir()
    for v in sorted(_need("assets", "gohd_examples", "driving_videos").glob("*.mp4")):
        frames, wav = _read(v)
        n = int(seconds * 25)
        for c in range(cuts):
            write_video(src / f"{v.stem}_cut{c}.mp4", frames[c * n:(c + 1) * n],
                        audio=wav[c * n * 640:(c + 1) * n * 640])
    for kind in ("deep3d_recon", "l2cs"):
        man = ow.load_manifest(_need("reference", kind, "manifest.json"))
        sd = ow.make_state_dict(man, ow.manifest_seed(man))
        np.savez(tmp / f"{kind}.npz", **{k: np.asarray(v) for k, v in sd.items()})
    return pp.list_videos([str(src)])


def run(tmp: Path, name: str, extra: list[str], env: dict) -> dict:
    out = tmp / f"out-{name}"
    cmd = [sys.executable, "-m", "data_pipelines.video.cli", "--videos", str(tmp / "videos"), "--out", str(out),
           "--deep3d", str(tmp / "deep3d_recon.npz"), "--l2cs", str(tmp / "l2cs.npz"),
           "--lm3d", str(_need("assets", "deep3d", "BFM", "similarity_Lm3D_all.mat")), "--no-progress", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"{name} failed:\n{res.stderr[-3000:]}")
    report = json.loads((out / ("report-beam.json" if "--runner" in extra else "report-0-of-1.json")).read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall": wall, "frames": report["video_frames_decoded"], "clips": manifest["num_clips"],
            "hashes": sorted(r["hash"] for s in manifest["shards"] for r in s["records"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each cut (%(default)s s)")
    ap.add_argument("--cuts", type=int, default=2, help="cuts per example video (%(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        videos = make_inputs(tmp, args.seconds, args.cuts)
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax-cache"),
               "PYTHONPATH": str(ROOT)}
        drivers = [("local driver", []),
                   ("Beam DirectRunner, 1 worker", ["--runner", "direct", "--direct_num_workers=1"]),
                   ("Beam DirectRunner, 2 workers", ["--runner", "direct", "--direct_num_workers=2",
                                                     "--direct_running_mode=multi_processing"])]
        print(f"# {len(videos)} videos ({args.seconds:g} s cuts of the example clips), {platform.machine()}, "
              f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", flush=True)
        run(tmp, "warm", drivers[0][1], env)  # fills the compile cache
        rows = [(name, run(tmp, name.split(",")[-1].strip().replace(" ", "-"), extra, env)) for name, extra in drivers]
        same = all(r["hashes"] == rows[0][1]["hashes"] for _, r in rows)
        print("\n| driver | frames | clips | wall, s (start-up included) | frames/s |")
        print("|---|---:|---:|---:|---:|")
        for name, r in rows:
            print(f"| {name} | {r['frames']} | {r['clips']} | {r['wall']:.1f} | {r['frames'] / r['wall']:.2f} |")
        print(f"\nsame clips (content hashes) from every driver: {same}")


if __name__ == "__main__":
    main()
