"""gohd-preprocess throughput, split by stage, on the real example videos; and the two estimators
alone at several batch sizes.

    python bench/bench_preprocess.py                  # both example videos, full pipeline
    python bench/bench_preprocess.py --estimators-only --batches 1 8 32

The estimators run the ported ResNet-50s with weights rebuilt from the reference manifests
(random, so the descriptors are meaningless; the arithmetic and the time are the real ones). The
3D alignment template is a stand-in (the real one ships with Deep3DFaceRecon). Prints markdown
tables for BENCHMARKS.md.
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

from gohd_jax import shared_data  # noqa: E402

LM3D = np.array([[-0.31, 0.29, 0.0], [0.31, 0.29, 0.0], [0.0, 0.0, 0.25], [-0.25, -0.34, 0.0],
                 [0.25, -0.34, 0.0]])


def _estimators(batch_size: int):
    from data_pipelines.video.estimate import Estimators
    from gohd_jax.interop import oracle_weights as ow
    from gohd_jax.interop.estimator_weights import deep3d_from_state_dict, l2cs_from_state_dict

    sds = {}
    for kind in ("deep3d_recon", "l2cs"):
        path = shared_data.shared_path("reference", kind, "manifest.json")
        if path is None:
            sys.exit(shared_data.describe_missing("reference", kind, "manifest.json"))
        man = ow.load_manifest(path)
        sds[kind] = ow.make_state_dict(man, ow.manifest_seed(man))
    return Estimators(deep3d_from_state_dict(sds["deep3d_recon"]), l2cs_from_state_dict(sds["l2cs"]), LM3D,
                      batch_size=batch_size)


def bench_estimators(batches: list[int], repeats: int) -> None:
    print("| batch | Deep3DFaceRecon + L2CS-Net, frames/s | ms per batch |")
    print("|---:|---:|---:|")
    for b in batches:
        est = _estimators(b)
        a = np.random.default_rng(0).uniform(0, 1, (b, 224, 224, 3)).astype(np.float32)
        g = np.random.default_rng(1).integers(0, 256, (b, 448, 448, 3), dtype=np.uint8)
        est(a, g)  # compile
        t0 = time.perf_counter()
        for _ in range(repeats):
            est(a, g)
        dt = (time.perf_counter() - t0) / repeats
        print(f"| {b} | {b / dt:.2f} | {dt * 1000:.0f} |")


def bench_pipeline(batch_size: int) -> None:
    from data_pipelines.video import preprocess as pp
    from data_pipelines.video.faces import FaceModels

    folder = shared_data.shared_path("assets", "gohd_examples", "driving_videos")
    if folder is None:
        sys.exit(shared_data.describe_missing("assets", "gohd_examples", "driving_videos"))
    videos = pp.list_videos([str(folder)])
    est = _estimators(batch_size)
    est(np.zeros((1, 224, 224, 3), np.float32), np.zeros((1, 448, 448, 3), np.uint8))  # compile
    with tempfile.TemporaryDirectory() as out:
        report = pp.preprocess(videos, out, faces=FaceModels(), estimators=est, progress=False)
    sec, fr = report["stages"]["seconds"], report["stages"]["frames"]
    total = sum(sec.values())
    print(f"{len(videos)} videos, {report['video_frames_decoded']} frames at 25 fps (256x256), "
          f"{report['clips_written']} clips; wall {report['wall_seconds']:.1f} s = "
          f"{report['frames_per_second']:.2f} frames/s end to end")
    print("| stage | what | frames | seconds | frames/s | share |")
    print("|---|---|---:|---:|---:|---:|")
    what = {"decode": "PyAV decode, both passes", "detect": "dlib HOG + thumbnail (pass 1)",
            "landmarks": "dlib 68 points (pass 1)", "crop": "256x256 crop + JPEG",
            "estimators": "alignment + Deep3D + L2CS (jitted)", "mel": "audio read + both mels",
            "write": "record encode + ArrayRecord write"}
    for k in ("decode", "detect", "landmarks", "crop", "estimators", "mel", "write"):
        if k in sec:
            fps = fr.get(k, 0) / sec[k] if sec[k] else float("inf")
            print(f"| {k} | {what[k]} | {fr.get(k, 0)} | {sec[k]:.2f} | {fps:.1f} | {sec[k] / total:.0%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--estimators-only", action="store_true")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch-size", type=int, default=32, help="estimator batch in the pipeline")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} device(s))")
    if not a.estimators_only:
        bench_pipeline(a.batch_size)
    bench_estimators(a.batches, a.repeats)


if __name__ == "__main__":
    main()
