"""The host side of ``gohd animate --manifest`` alone: threads against processes.

    python bench/bench_host_pipeline.py                       # 48 rows of 8 s, 1/2/4 workers
    python bench/bench_host_pipeline.py --estimators --rows 32 --workers 2

Each row is one of the real portraits of ``$GOHD_SHARED/assets/gohd_examples/source`` and a cut of
real speech (``--seconds`` long), prepared by the command's own per-row function
(``gohd_jax.infer.cli.prepare_row``: read and decode the image and audio, find the face and crop
it, the source descriptors, the audio features). No device loop: the table is the rate at which
the host alone can feed one.

- ``thread``: the command's ``HostPipeline`` with ``--host-workers N`` (the default form);
- ``process``: the same per-row function in a pool of N spawned worker processes, each with its
  own face models (and estimators), the prepared rows sent back by pickling (the fairest process form:
  workers load no model weights but the face and estimator models, which they need).

``--estimators`` adds the ported Deep3DFaceRecon and L2CS estimators (random official-format
weights built from the oracle manifests; the arithmetic is the real one) that measure the source's
exp0/pose0/gaze0, as ``--deep3d/--lm3d/--l2cs`` do.

Columns: start-up seconds (models loaded, one row per worker done, so that compilation is
excluded), rows/s after start-up, host seconds per row by stage (summed over workers, divided by
rows), CPU seconds per row (all threads; for processes, the workers' and the main process's) and
peak RSS (/proc VmHWM; for processes: the main process + workers x the largest worker's peak).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

STAGES = ("decode", "face", "descriptors", "features")


def _shared(*parts: str) -> Path:
    from gohd_jax.shared_data import describe_missing, shared_path

    path = shared_path(*parts)
    if path is None:
        raise SystemExit(describe_missing(*parts))
    return path


def _estimators():
    from data_pipelines.video.estimate import Estimators
    from gohd_jax.interop import oracle_weights as ow
    from gohd_jax.interop.estimator_weights import deep3d_from_state_dict, l2cs_from_state_dict

    sds = {}
    for kind in ("deep3d_recon", "l2cs"):
        man = ow.load_manifest(_shared("reference", kind, "manifest.json"))
        sds[kind] = ow.make_state_dict(man, ow.manifest_seed(man))
    from data_pipelines.video.align import load_lm3d

    lm3d = load_lm3d(_shared("assets", "deep3d", "BFM", "similarity_Lm3D_all.mat"))
    return Estimators(deep3d_from_state_dict(sds["deep3d_recon"]), l2cs_from_state_dict(sds["l2cs"]), lm3d,
                      batch_size=1)


def _prepare_fn(argv: list[str], estimators: bool, image_size: int, condition: str):
    """The command's per-row function (``cli.prepare_row``) over what it reads of the command's
    context: face models, estimators, the bundle's image size and motion condition (the bundle's
    weights are not loaded: a worker process does not need them)."""
    import threading

    from data_pipelines.video.faces import FaceModels
    from gohd_jax.infer import cli
    from gohd_jax.infer.animate import clip_features

    args = cli.build_parser().parse_args(argv)
    ctx = types.SimpleNamespace(bundle=types.SimpleNamespace(image_size=image_size), faces=FaceModels(),
                                estimators=_estimators() if estimators else None, face_lock=threading.Lock())
    features = types.SimpleNamespace(features=lambda job: clip_features(job.wav, condition))
    return cli.prepare_row(ctx, features, args)


_WORKER = {}


def _init_worker(argv: list[str], estimators: bool, image_size: int, condition: str, first, barrier) -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    _WORKER["prepare"] = _prepare_fn(argv, estimators, image_size, condition)
    _WORKER["prepare"](first)  # compiles what a row needs, as the threads' warm-up does
    _WORKER["barrier"] = barrier


def _ready(_) -> int:
    _WORKER["barrier"].wait()  # returns once every worker holds one of these: all are up
    return os.getpid()


def _peak_rss_mb() -> float:
    """This process's peak RSS from /proc (ru_maxrss of a spawned child starts at its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _work(row):
    t0 = time.process_time()  # this worker process's CPU seconds (all its threads)
    prepared = _WORKER["prepare"](row)
    return prepared, time.process_time() - t0, _peak_rss_mb()


def run(kind: str, workers: int, argv: list[str], rows: list, estimators: bool, image_size: int,
        condition: str) -> dict:
    from gohd_jax.infer import manifest as M

    t0 = time.perf_counter()
    warm = max(workers, 1)
    if kind == "thread":
        prepare = _prepare_fn(argv, estimators, image_size, condition)
        for r in rows[:warm]:
            prepare(r)
        startup = time.perf_counter() - t0
        cpu1, t1 = time.process_time(), time.perf_counter()
        done = [p for batch in M.HostPipeline(iter(rows[warm:]), prepare, batch=16, window=128, workers=workers,
                                              length=lambda p: p.feats["frames"]) for p in batch]
        wall = time.perf_counter() - t1
        cpu = time.process_time() - cpu1
        rss = _peak_rss_mb()
    else:
        import multiprocessing

        mp = multiprocessing.get_context("spawn")
        with mp.Manager() as manager:
            pool = ProcessPoolExecutor(workers, mp_context=mp, initializer=_init_worker,
                                       initargs=(argv, estimators, image_size, condition, rows[0],
                                                 manager.Barrier(workers)))
            assert len(set(pool.map(_ready, range(workers)))) == workers
            startup = time.perf_counter() - t0
            cpu1, t1 = time.process_time(), time.perf_counter()
            out = list(pool.map(_work, rows[warm:], chunksize=1))
            wall = time.perf_counter() - t1
            cpu = time.process_time() - cpu1 + sum(c for _, c, _ in out)
            done = [p for p, _, _ in out]
            pool.shutdown()
        rss = _peak_rss_mb() + workers * max(m for _, _, m in out)
    if len(done) != len(rows) - warm or any(isinstance(p, M.Failed) for p in done):
        raise SystemExit(f"{kind} x {workers}: {len(done)} of {len(rows) - warm} rows prepared")
    stage = {s: sum(p.times.get(s, 0.0) for p in done) / len(done) for s in STAGES}
    return {"startup_s": startup, "rows_per_s": len(done) / wall, "stage": stage, "cpu_per_row": cpu / len(done),
            "rss_mb": rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=48, help="rows per run (after one warm-up row per worker)")
    p.add_argument("--seconds", type=float, default=8.0, help="speech per row")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--kinds", nargs="+", choices=("thread", "process"), default=["thread", "process"])
    p.add_argument("--estimators", action="store_true", help="measure exp0/pose0/gaze0 with the ported estimators")
    p.add_argument("--size", choices=("tiny", "official"), default="official",
                   help="crop size and motion condition of this bundle size (256 px / release, 64 px / mel100)")
    a = p.parse_args()

    import jax
    import soundfile as sf

    from data_pipelines.audio import load_audio
    from gohd_jax.infer import manifest as M

    examples = _shared("assets", "gohd_examples")
    portraits = sorted((examples / "source").glob("*.jpg"))
    speech = load_audio(str(examples / "audios" / "sing.wav"), 16000)
    root = Path(tempfile.mkdtemp(prefix="gohd_host_bench_"))
    n = int(a.seconds * 16000)
    for k in range(4):  # four cuts of the song, looped to the length asked
        start = k * len(speech) // 4
        sf.write(str(root / f"a{k}.wav"), np.resize(np.roll(speech, -start), n), 16000)
    # what the host reads of the bundle: official 256 px and the release's motion condition, the
    # tiny test bundle 64 px and mel100 (no bundle is built: no weights are held)
    image_size, condition = (256, "release") if a.size == "official" else (64, "mel100")
    lines = ["image,audio,out"] + [f"{portraits[k % len(portraits)]},a{k % 4}.wav,out/c{k}.mp4"
                                   for k in range(a.rows + max(a.workers))]
    (root / "jobs.csv").write_text("\n".join(lines) + "\n")
    (root / "out").mkdir()
    argv = ["animate", "--manifest", str(root / "jobs.csv"), "--checkpoint", "unused"]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on cpu; {a.rows} rows of {a.seconds:g} s speech on {len(portraits)} real portraits; "
          f"{a.size} crop size and motion condition; estimators {'on' if a.estimators else 'off'}")
    print("| pool | workers | start-up s | rows/s | decode ms | face ms | descriptors ms | features ms "
          "| CPU s per row | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in a.kinds:
        for w in a.workers:
            rows = list(M.iter_rows(root / "jobs.csv"))[:a.rows + w]
            r = run(kind, w, argv, rows, a.estimators, image_size, condition)
            ms = " | ".join(f"{1000 * r['stage'][s]:.0f}" for s in STAGES)
            print(f"| {kind} | {w} | {r['startup_s']:.1f} | {r['rows_per_s']:.2f} | {ms} | {r['cpu_per_row']:.2f} "
                  f"| {r['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
