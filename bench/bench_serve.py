"""``gohd serve`` under load: clips per minute and latency for 1, 4 and 16 concurrent requests,
request batching on (``--max-batch-clips 16``) and off (``--max-batch-clips 1``).

The server runs as ``gohd serve`` in a subprocess on 127.0.0.1 with the tiny random-init bundle
(64 px) on the CPU; clients are ``gradio_client`` threads. Each round sends C requests at once (3 s
of real speech each, DDIM 2 steps, a different seed each) and waits for all; a round's wall time
gives clips/min, each request's time from send to mp4 received gives the latency percentiles.
Before measuring, every batch size the round will use is compiled (one warm-up round per C).

    .venv/bin/python bench/bench_serve.py [--rounds 2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def start_server(bundle: str, port: int, max_batch: int, work: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GOHD_COMPILE_CACHE": "off"}
    log = open(work / f"server_{max_batch}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gohd_jax.infer.cli", "serve", "--checkpoint", bundle, "--port",
                             str(port), "--max-batch-clips", str(max_batch), "--max-wait-ms", "300",
                             "--max-queue", "64", "--no-examples"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    for _ in range(360):
        try:
            if _get(f"http://127.0.0.1:{port}/healthz")["ok"]:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def round_of(base: str, portrait: str, wav: str, c: int, seed0: int) -> tuple[float, list[float]]:
    from gradio_client import Client, handle_file

    clients = [Client(base + "/", verbose=False) for _ in range(c)]
    barrier = threading.Barrier(c + 1)
    lat = [0.0] * c
    errors = []

    def go(i):
        barrier.wait()
        t0 = time.perf_counter()
        try:
            clients[i].predict(handle_file(portrait), handle_file(wav), sampler="ddim", steps=2, seed=seed0 + i,
                               api_name="/animate")
        except Exception as e:
            errors.append(e)
        lat[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=go, args=(i,)) for i in range(c)]
    [t.start() for t in threads]
    barrier.wait()
    t0 = time.perf_counter()
    [t.join() for t in threads]
    if errors:
        raise SystemExit(f"a request failed: {errors[0]}")
    return time.perf_counter() - t0, lat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", default="1,4,16")
    args = p.parse_args()
    import portpicker
    import soundfile as sf

    from data_pipelines.audio import load_audio
    from gohd_jax import shared_data
    from gohd_jax.infer.bundle import random_bundle, save_bundle

    src = shared_data.shared_path("assets", "gohd_examples")
    if src is None:
        raise SystemExit(shared_data.describe_missing("assets", "gohd_examples"))
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    bundle = str(save_bundle(random_bundle("tiny", window=32), work / "tiny"))
    wav = work / "speech.wav"
    sf.write(str(wav), np.resize(load_audio(src / "audios" / "monalisa.mp3"), int(args.seconds * 16000)), 16000)
    portrait = str(src / "source" / "HDTF_0.jpg")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for max_batch in (16, 1):
        port = portpicker.pick_unused_port()
        proc = start_server(bundle, port, max_batch, work)
        base = f"http://127.0.0.1:{port}"
        try:
            for c in levels:
                round_of(base, portrait, str(wav), c, 1000)  # warm-up: this C's batch sizes compiled
                s0 = _get(base + "/stats")
                walls, lats = [], []
                for r in range(args.rounds):
                    wall, lat = round_of(base, portrait, str(wav), c, 10 * r)
                    walls.append(wall)
                    lats += lat
                s1 = _get(base + "/stats")
                batches = s1["batches_run"] - s0["batches_run"]
                rows.append((max_batch, c, 60 * c * args.rounds / sum(walls), float(np.percentile(lats, 50)),
                             float(np.percentile(lats, 95)), c * args.rounds / max(batches, 1)))
                print(f"max-batch-clips {max_batch:2d}, {c:2d} concurrent: {rows[-1][2]:.1f} clips/min, "
                      f"p50 {rows[-1][3]:.2f} s, p95 {rows[-1][4]:.2f} s, {rows[-1][5]:.1f} clips a batch", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print("\n| batching | concurrent requests | clips/min | p50 latency (s) | p95 latency (s) | clips per batch |\n"
          "|---|---|---|---|---|---|")
    for max_batch, c, cpm, p50, p95, per in rows:
        mode = f"on (--max-batch-clips {max_batch})" if max_batch > 1 else "off (--max-batch-clips 1)"
        print(f"| {mode} | {c} | {cpm:.1f} | {p50:.2f} | {p95:.2f} | {per:.1f} |")


if __name__ == "__main__":
    main()
