"""gohd-eval's speed: frames/s of each metric network at batch 1 and 32, and clips/minute of the
whole report.

    python bench/bench_eval.py                      # the networks, batch 1 and 32
    python bench/bench_eval.py --report --clips 8 --seconds 10

Networks (random weights from the oracles' manifests, or the architectures' own init: the
arithmetic and the time are the real ones), each jitted once per batch, warmed up, then timed
over ``--repeats`` calls: SyncNet's lip stream (one item = a 5-frame window of 224x224 crops; a
video frame costs one window) and audio stream (13x20 MFCC), InceptionV3 (299x299), ArcFace
iresnet100 and iresnet50 (112x112). Items/s = frames/s.

``--report``: ``gohd-eval`` itself (``Evaluator.run``: decode, face track, crops, every network,
PSNR/SSIM, FID) on ``--clips`` clips of ``--seconds`` s made by looping the real example clips
(``$GOHD_SHARED/assets/gohd_examples/driving_videos``), scored against themselves as the real
set; networks built from the manifests' weights (as ``load_networks`` builds them from
files). Prints the clips/minute and the seconds per
stage. Needs the shared folder.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gohd_jax  # noqa: E402,F401  (first: JAX on the CPU cleanly where the AOT plugins are installed)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402


def _state_dict(oracle: str):
    from gohd_jax.interop import oracle_weights as ow
    from gohd_jax.shared_data import describe_missing, shared_path

    path = shared_path("reference", oracle, "manifest.json")
    if path is None:
        sys.exit(describe_missing("reference", oracle, "manifest.json"))
    man = ow.load_manifest(path)
    return ow.make_state_dict(man, ow.manifest_seed(man))


def _networks():
    """name -> (apply(x) jitted per shape, item maker(batch) -> host array)."""
    import jax.numpy as jnp

    from gohd_jax.interop.arcface_weights import arcface_from_state_dict
    from gohd_jax.interop.inception_weights import fid_inception_from_state_dict
    from gohd_jax.interop.syncnet_v2_weights import syncnet_v2_from_state_dict
    from gohd_jax.models.arcface import iresnet50

    rng = np.random.default_rng(0)
    sync = syncnet_v2_from_state_dict(_state_dict("syncnet"))
    inc = fid_inception_from_state_dict(_state_dict("fid_inception"))
    r100 = arcface_from_state_dict(_state_dict("arcface"))
    r50 = iresnet50(rngs=nnx.Rngs(0))

    def jitted(model, method):
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x))
        return lambda x: fn(state, x)

    return {
        "SyncNet lip (5x224x224 window)": (jitted(sync, "embed_lip"),
                                           lambda b: rng.integers(0, 256, (b, 5, 224, 224, 3)).astype(np.float32)),
        "SyncNet audio (13x20 MFCC)": (jitted(sync, "embed_audio"),
                                       lambda b: rng.normal(size=(b, 13, 20, 1)).astype(np.float32)),
        "InceptionV3 (299x299)": (jitted(inc, "__call__"), lambda b: rng.random((b, 299, 299, 3), np.float32)),
        "ArcFace iresnet100 (112x112)": (jitted(r100, "__call__"),
                                         lambda b: rng.uniform(-1, 1, (b, 112, 112, 3)).astype(np.float32)),
        "ArcFace iresnet50 (112x112)": (jitted(r50, "__call__"),
                                        lambda b: rng.uniform(-1, 1, (b, 112, 112, 3)).astype(np.float32)),
    }, jnp


def bench_networks(batches, repeats: int) -> None:
    nets, _ = _networks()
    print("| network | " + " | ".join(f"batch {b} (frames/s)" for b in batches) + " | compile, batch "
          f"{batches[-1]} (s) |")
    print("|---|" + "---:|" * (len(batches) + 1))
    for name, (fn, make) in nets.items():
        rates, compile_s = [], 0.0
        for b in batches:
            x = jax.device_put(make(b))
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            compile_s = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(fn(x))
            rates.append(b * repeats / (time.perf_counter() - t))
        print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + f" | {compile_s:.1f} |", flush=True)


def bench_report(clips: int, seconds: float, batch_size: int) -> None:
    from data_pipelines.video.faces import FaceModels
    from gohd_jax.eval import clips as clip_io
    from gohd_jax.eval.networks import ArcFaceEmbedder, InceptionFeatures, Networks, SyncNetScorer
    from gohd_jax.interop.arcface_weights import arcface_from_state_dict
    from gohd_jax.interop.inception_weights import fid_inception_from_state_dict
    from gohd_jax.interop.syncnet_v2_weights import syncnet_v2_from_state_dict
    from gohd_jax.eval.pairs import pairs_from_dirs
    from gohd_jax.eval.runner import EvalSettings, Evaluator
    from gohd_jax.infer.mp4 import Mp4Writer
    from gohd_jax.shared_data import describe_missing, shared_path

    examples = shared_path("assets", "gohd_examples", "driving_videos")
    if examples is None:
        sys.exit(describe_missing("assets", "gohd_examples", "driving_videos"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "clips").mkdir()
        sources = sorted(examples.glob("*.mp4"))
        n = int(seconds * 25)
        for i in range(clips):
            src = clip_io.read_clip(sources[i % len(sources)])
            reps = -(-n // len(src.frames))
            frames = np.concatenate([src.frames] * reps)[:n]
            audio = np.tile(src.audio, reps)[:n * 640]
            w = Mp4Writer(tmp / "clips" / f"clip{i}.mp4", frames.shape[1:3], audio=audio)
            w.write(frames)
            w.close()
        t = time.perf_counter()
        nets = Networks(syncnet=SyncNetScorer(syncnet_v2_from_state_dict(_state_dict("syncnet")), batch_size),
                        inception=InceptionFeatures(fid_inception_from_state_dict(_state_dict("fid_inception")),
                                                    batch_size),
                        arcface=ArcFaceEmbedder(arcface_from_state_dict(_state_dict("arcface")), batch_size))
        load_s = time.perf_counter() - t
        pairs = pairs_from_dirs(tmp / "clips", tmp / "clips")
        ev = Evaluator(nets, FaceModels(), EvalSettings(), progress=True)
        t = time.perf_counter()
        report = ev.run(pairs)
        run_s = time.perf_counter() - t
        h, w = frames.shape[1:3]
        print(f"\n{clips} clips of {seconds:g} s ({w}x{h}), scored against themselves (every metric, FID on "
              f"{report['counts']['fid_generated_frames']} + {report['counts']['fid_real_frames']} frames), "
              f"batch {batch_size}:")
        print("| networks built (s) | report (s) | clips/minute | frames/s (generated + real decoded) |")
        print("|---:|---:|---:|---:|")
        rate = report["counts"]["frames_read"] / run_s
        print(f"| {load_s:.1f} | {run_s:.1f} | {clips / run_s * 60:.2f} | {rate:.1f} |")
        print("\nseconds inside each network's batched calls (the rest: decode, face track, crops, "
              "MFCC, PSNR/SSIM, FID's square root):")
        for b in (nets.syncnet.lip, nets.syncnet.aud, nets.inception.batcher, nets.arcface.batcher):
            print(f"  {b.name}: {b.seconds:.1f} s for {b.items_run} items")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--report", action="store_true", help="time the whole gohd-eval report instead")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    print(f"# {platform.machine()}, {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    if args.report:
        bench_report(args.clips, args.seconds, args.batch_size)
    else:
        bench_networks(args.batches, args.repeats)


if __name__ == "__main__":
    main()
