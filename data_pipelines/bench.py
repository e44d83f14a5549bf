"""``gohd-data bench``: how fast a stage's pipeline feeds, and what each sample costs in bytes.

Measures one stage's Grain pipeline on a dataset folder: samples/s after a warm-up, and the
ArrayRecord bytes each sample read (counted where the bytes are returned by ArrayRecord, in
whichever process ran the sampler, not estimated). ``read_latency_ms`` sleeps before every read,
to see how many workers and read threads hide an object store's per-read latency.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# bench stage -> (pipeline stage, make_dataset keyword arguments). "sync" is the pixel expert
# (sync_tiny: faces, 7 negatives), "sync_mouth" the coefficient-space expert (no faces).
STAGES = {
    "animator": ("animator", {}),
    "motion": ("motion", {}),
    "expression": ("expression", {}),
    "sync": ("sync", {"sync_negatives": 7}),
    "sync_mouth": ("sync", {"sync_negatives": 7, "sync_faces": False}),
}


def bench(data_dir, stage: str, *, workers: int = 0, batches: int = 30, batch_size: int = 8,
          warmup: int = 3, read_latency_ms: float = 0.0, read_threads: int = 1, seed: int = 0) -> dict:
    """One measurement: ``batches`` batches of ``batch_size`` after ``warmup`` batches.

    Returns {"stage", "workers", "read_threads", "read_latency_ms", "batch_size", "samples",
    "seconds", "samples_per_s", "bytes_per_sample", "frame_size", "clip_seconds"}.
    """
    from data_pipelines import pipelines  # grain: imported when measuring, not for `gohd-data --help`
    from data_pipelines.records import ClipDataset

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if batches < 1 or batch_size < 1 or warmup < 0 or workers < 0 or read_threads < 1:
        raise ValueError("batches, batch_size and read_threads must be >= 1; warmup and workers >= 0")
    clips = ClipDataset(Path(data_dir), read_latency_s=read_latency_ms / 1000.0)
    pipe_stage, kw = STAGES[stage]
    ds = pipelines.make_dataset(pipe_stage, clips, seed=seed, split="all", shard_index=0, shard_count=1,
                                count_bytes=True, **kw)
    it = pipelines.make_iterator(ds, batch_size, num_workers=workers, read_threads=read_threads)
    for _ in range(warmup):  # start-up: worker processes, first reads
        next(it)
    read = []
    t0 = time.perf_counter()
    for _ in range(batches):
        read.append(next(it)["bytes_read"])
    seconds = time.perf_counter() - t0
    n = batches * batch_size
    frames = [r["num_frames"] for r in clips.index]
    return {"stage": stage, "workers": workers, "read_threads": read_threads, "read_latency_ms": read_latency_ms,
            "batch_size": batch_size, "samples": n, "seconds": seconds, "samples_per_s": n / seconds,
            "bytes_per_sample": float(np.mean(np.concatenate(read))),
            "frame_size": int(clips.manifest.get("dataset", {}).get("size", 0)) or None,
            "clip_seconds": float(np.mean(frames)) / 25.0}


def format_row(r: dict) -> str:
    return (f"| {r['stage']} | {r['workers']} | {r['read_threads']} | {r['read_latency_ms']:g} | "
            f"{r['samples_per_s']:.0f} | {r['bytes_per_sample'] / 1e6:.3f} |")


HEADER = ("| stage | workers | read threads | read latency (ms) | samples/s | MB read per sample |\n"
          "|---|---:|---:|---:|---:|---:|")
