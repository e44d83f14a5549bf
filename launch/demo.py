"""The main job on the embedded default (``make demo``).

Generates the synthetic talking-head dataset (resumable), verifies it, prints
its summary, draws one batch from each stage's Grain pipeline, writes a preview
image, and extracts audio features from the real example speech when the
shared folder is present.

    python launch/demo.py --workdir=workdir/demo [--config=configs/synthetic.py:demo] [--config.clips=96]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(Path(__file__).resolve().parent.parent / "configs" / "synthetic.py") + ":demo",
    "Synthetic dataset config (configs/synthetic.py:VARIANT).")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/demo", "Where the dataset and outputs go.")
_ANIMATOR_STEPS = flags.DEFINE_integer("animator_steps", 800, "Training steps of the tiny animator (0 = skip).")
_POSE_STEPS = flags.DEFINE_integer("pose_steps", 600, "Training steps of the tiny pose denoiser (0 = skip).")
_GAZE_STEPS = flags.DEFINE_integer("gaze_steps", 200, "Training steps of the tiny gaze denoiser (0 = skip).")
_SYNC_STEPS = flags.DEFINE_integer("sync_steps", 50, "Training steps of the tiny lip-sync expert (0 = skip).")
_STAGE1_STEPS = flags.DEFINE_integer("stage1_steps", 150, "Training steps of expression stage 1 (0 = skip "
                                     "both expression stages).")
_STAGE2_STEPS = flags.DEFINE_integer("stage2_steps", 1200, "Training steps of expression stage 2 (batch 16; "
                                     "fewer steps blink less: 400 give ~8 blinks/min, ground truth ~16).")
_EVAL_CLIPS = flags.DEFINE_integer("expression_eval_clips", 4, "Held-out clips the expression report uses.")
# An expert at chance level gives meaningless LSE scores; below this held-out accuracy the demo's
# stage 1 trains its own audio encoder and the report leaves lip sync out.
EXPERT_USEFUL_ACCURACY = 0.6


def _preview(clips, path: Path, per_row: int = 8) -> None:
    """A grid: one row per clip (first 4 clips), 8 frames spread over the clip."""
    import numpy as np
    from PIL import Image

    from data_pipelines import schema
    rows = []
    for i in range(min(4, len(clips))):
        clip = clips[i]
        idx = np.linspace(0, len(clip["frames"]) - 1, per_row).astype(int)
        frames = ((schema.decode_frames(clip, idx) + 1) * 127.5).round().astype(np.uint8)
        rows.append(np.concatenate(list(frames), axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def _real_media_summary() -> str:
    from data_pipelines import audio
    from gohd_jax import shared_data
    speech = shared_data.shared_path("assets", "gohd_examples", "audios", "monalisa.mp3")
    if speech is None:
        return ("real media: not found, so this demo used synthetic data only ("
                + shared_data.describe_missing("assets", "gohd_examples") + ")")
    wav = audio.load_audio(speech)
    t = audio.num_video_frames(len(wav))
    wav = audio.crop_to_frames(wav)
    mels = audio.frame_mel_windows(audio.wav2lip_mel(wav), t)
    cond = audio.frame_cond_100hz(audio.mel_100hz(wav), t)
    return (f"real media: {speech.name} from the shared examples, {len(wav) / audio.SAMPLE_RATE:.2f} s -> "
            f"{t} video frames; Wav2Lip mel windows {list(mels.shape)}, 100 Hz motion condition {list(cond.shape)}")


def _train_expression_stage(variant: str, data_dir: Path, run_dir: Path, steps: int, **task):
    from configs import expression
    from gohd_jax.train.tasks import get_task_class
    from gohd_jax.train.trainer import Trainer

    cfg = expression.get_config(variant)
    cfg.data.dir = str(data_dir)
    cfg.update(num_steps=steps, log_every=50, eval_every=steps, checkpoint_every=steps)
    if variant == "stage1_tiny":
        cfg.batch_size = 8  # the demo's budget; the config's 16 learns the same per example
    for k, v in task.items():
        cfg.task[k] = v
    return Trainer(get_task_class(cfg.task_name)(cfg), cfg, run_dir).train()


def _train_animator(data_dir: Path, run_dir: Path, steps: int):
    """Trains the tiny animator; returns (result, trainer) for the held-out grid."""
    from configs import animator
    from gohd_jax.train.tasks.animator import AnimatorTask
    from gohd_jax.train.trainer import Trainer

    cfg = animator.get_config("tiny")
    cfg.data.dir = str(data_dir)
    cfg.update(num_steps=steps, log_every=50, eval_every=steps, eval_steps=4, checkpoint_every=steps)
    trainer = Trainer(AnimatorTask(cfg), cfg, run_dir)
    return trainer.train(), trainer


def _train_motion(data_dir: Path, run_dir: Path, target: str, steps: int):
    """Trains the tiny pose or gaze denoiser; returns (result, trainer)."""
    from configs import motion
    from gohd_jax.train.tasks.motion_diffusion import MotionDiffusionTask
    from gohd_jax.train.trainer import Trainer

    cfg = motion.get_config(f"{target}_tiny")
    cfg.data.dir = str(data_dir)
    cfg.update(num_steps=steps, log_every=100, eval_every=steps, checkpoint_every=steps)
    trainer = Trainer(MotionDiffusionTask(cfg), cfg, run_dir)
    return trainer.train(), trainer


def _motion_report(trainer, data_dir: Path, target: str, path: Path) -> str:
    """Samples held-out clips (the release's DDPM-150, the long-audio windowing) and scores them."""
    import jax
    import numpy as np

    from gohd_jax.diffusion import samplers
    from gohd_jax.eval import motion as motion_eval

    model = trainer.ctx.ema_model(trainer.final_state, "denoiser")
    held = motion_eval.heldout_motion(data_dir)
    cfg = trainer.config
    gen = motion_eval.generate_motion(model, held["cond"], held[target][:, 0], residual=target == "pose",
                                      key=jax.random.key(0), spec=samplers.SamplerSpec(),
                                      window=int(cfg.data.window), data_scale=float(cfg.task.data_scale))
    np.savez(path, generated=gen, ground_truth=held[target])
    if target == "gaze":
        err = float(np.abs(gen - held["gaze"]).mean())
        return (f"held-out gaze: {len(gen)} clips sampled (DDPM-150); temporal std {gen.std(1).mean():.3f} rad "
                f"(ground truth {held['gaze'].std(1).mean():.3f}); mean |error| {err:.3f} rad")
    rep = motion_eval.motion_report(gen, held["pose"], held["cond"])
    return (f"held-out pose, {len(gen)} clips sampled with DDPM-150 in {cfg.data.window}-frame windows:\n"
            + motion_eval.format_report(rep))


def _heldout_grid(trainer, path: Path, rows: int = 4, zoom: int = 2) -> None:
    """source | target | reconstruction for held-out identities (one row each), each pixel
    drawn as zoom x zoom (the 64 px faces are small on screen)."""
    import jax
    import numpy as np
    from PIL import Image

    from data_pipelines import pipelines

    ds = pipelines.make_dataset("animator", trainer.config.data.dir, seed=1, split="heldout",
                                shard_index=0, shard_count=1)
    batch = next(pipelines.make_iterator(ds, rows))
    recon = jax.jit(lambda s, b: trainer.task.reconstruct(trainer.ctx, s, b))(trainer.final_state, batch)
    recon = np.asarray((np.clip(np.asarray(recon), -1, 1) + 1) * 127.5).round().astype(np.uint8)
    grid = np.concatenate([np.concatenate([batch["source"][i], batch["target"][i], recon[i]], axis=1)
                           for i in range(rows)], axis=0)
    grid = np.repeat(np.repeat(grid, zoom, axis=0), zoom, axis=1)
    Image.fromarray(grid).save(path)


def _render_videos(workdir: Path, data_dir: Path) -> list[str]:
    """gohd animate with the tiny models just trained: a held-out synthetic identity speaking its
    own (held-out) audio, and a real example portrait driven by a real speech file."""
    import numpy as np

    from data_pipelines import pipelines, records, schema
    from gohd_jax import shared_data
    from gohd_jax.infer import cli
    from gohd_jax.infer.animate import Animate, ClipJob
    from gohd_jax.infer.bundle import load_bundle
    from gohd_jax.infer.mp4 import Mp4Writer

    lines = []
    out_dir = workdir / "videos"
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = records.ClipDataset(data_dir)
    held = pipelines.select_clips(clips.index, split="heldout", heldout_fraction=0.25, min_frames=1)
    clip = clips[held[0]]
    seconds = min(len(clip["frames"]) / 25, 6.0)
    wav = np.asarray(clip["audio"][:int(seconds * 16000)])
    t0 = time.perf_counter()
    engine = Animate(load_bundle(workdir))
    job = ClipJob("synthetic", schema.decode_jpeg(clip["frames"][0]), clip["descriptors"][0], clip["controls"][0],
                  wav, seed=0)
    out = out_dir / "heldout_synthetic.mp4"
    with Mp4Writer(out, engine.size, audio=wav) as w:
        drives, _ = engine.run([job], [w])
    lines.append(f"video       {out}: held-out identity {clip['identity_id']} speaking its own held-out audio, "
                 f"{len(drives[0]['descriptors'])} frames ({time.perf_counter() - t0:.0f} s)")
    image = shared_data.shared_path("assets", "gohd_examples", "source", "HDTF_0.jpg")
    speech = shared_data.shared_path("assets", "gohd_examples", "audios", "monalisa.mp3")
    if image is None or speech is None:
        lines.append("video       (no real example: " + shared_data.describe_missing("assets", "gohd_examples") + ")")
        return lines
    out = out_dir / "real_HDTF_0_monalisa.mp4"
    t0 = time.perf_counter()
    code = cli.main(["animate", "--image", str(image), "--audio", str(speech), "--out", str(out),
                     "--checkpoint", str(workdir)])
    if code == 0:
        lines.append(f"video       {out}: the real portrait HDTF_0.jpg driven by monalisa.mp3 (shared examples), "
                     f"with the tiny synthetic-trained models at 64 px ({time.perf_counter() - t0:.0f} s)")
    return lines


def main(argv) -> None:
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    from data_pipelines import pipelines, records
    from data_pipelines.synthetic.cli import write_synthetic_dataset
    from data_pipelines.synthetic.generator import SynthConfig

    cfg = _CONFIG.value
    workdir = Path(_WORKDIR.value)
    data_dir = workdir / "data" / "synthetic"
    synth = SynthConfig(size=cfg.size, seconds=cfg.seconds, num_identities=cfg.identities, seed=cfg.seed)
    print(f"== GoHD-JAX demo: synthetic talking-head dataset ({cfg.variant}) -> {data_dir}")
    t0 = time.perf_counter()
    manifest = write_synthetic_dataset(data_dir, synth, cfg.clips, clips_per_shard=cfg.clips_per_shard,
                                       jpeg_quality=cfg.jpeg_quality, workers=cfg.workers)
    print(f"generated in {time.perf_counter() - t0:.1f} s")
    print(records.summarize(manifest))
    report = records.verify_dataset(data_dir, progress=False)
    print(f"verified    {report['clips']} clips, {len(report['bad'])} bad records, "
          f"{len(report['shard_errors'])} bad shards")

    clips = records.ClipDataset(data_dir)
    frames = min(r["num_frames"] for r in clips.index)
    print("\n== One batch of 4 from each stage's Grain pipeline (train split; held-out identities excluded)")
    for stage in pipelines.STAGES:
        window = min(pipelines.DEFAULT_WINDOW[stage], frames)
        ds = pipelines.make_dataset(stage, clips, window=window, shard_index=0, shard_count=1)
        batch = next(pipelines.make_iterator(ds, 4))
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in batch.items() if k not in ("clip_index", "start"))
        print(f"{stage:10s} window {window:3d}: {shapes}")

    if _ANIMATOR_STEPS.value > 0:
        print(f"\n== The tiny animator (GoHD's Generator_Semantic, 64 px) as a self-reconstruction GAN, "
              f"{_ANIMATOR_STEPS.value} steps (configs/animator.py:tiny)")
        result, trainer = _train_animator(data_dir, workdir / "animator", _ANIMATOR_STEPS.value)
        ev = result.eval_metrics
        grid = workdir / "animator_heldout.png"
        _heldout_grid(trainer, grid)
        gain = ev["eval/psnr"] - ev["eval/psnr_copy_source"]
        print(f"{result.status} at step {result.step} (reconstruction losses, the GAN from step "
              f"{trainer.config.task.gan_start_step}): held-out PSNR {ev['eval/psnr']:.2f} dB; copying the "
              f"source frame gives {ev['eval/psnr_copy_source']:.2f} dB ({gain:+.2f} dB); L1 where target and "
              f"source differ {ev['eval/changed_l1']:.3f} (copying: {ev['eval/changed_l1_copy_source']:.3f}); "
              f"sharpness (image-gradient energy / the target's) {ev['eval/sharpness']:.2f}. "
              f"Longer runs: launch/train.py --config=configs/animator.py:tiny (BENCHMARKS.md)")
        print(f"grid        {grid} (rows: held-out identities; columns: source | target | reconstruction)")

    for target, steps in (("pose", _POSE_STEPS.value), ("gaze", _GAZE_STEPS.value)):
        if steps <= 0:
            continue
        print(f"\n== The tiny {target} diffusion denoiser (GoHD's TISA conformer), {steps} steps "
              f"(configs/motion.py:{target}_tiny)")
        result, trainer = _train_motion(data_dir, workdir / target, target, steps)
        ev = result.eval_metrics
        print(f"{result.status} at step {result.step}: held-out eps-MSE {ev['eval/loss']:.4f} "
              f"(predicting zero: {ev['eval/loss_predict_zero']:.4f})")
        print(_motion_report(trainer, data_dir, target, workdir / f"{target}_heldout.npz"))

    if _STAGE1_STEPS.value > 0:
        print(f"\n== Expression (configs/expression.py): the lip-sync expert ({_SYNC_STEPS.value} steps), "
              f"stage 1 ({_STAGE1_STEPS.value}), stage 2's LSTM on frozen stage 1 ({_STAGE2_STEPS.value})")
        from gohd_jax.eval import expression as expression_eval

        expert_dir = None
        if _SYNC_STEPS.value > 0:
            result = _train_expression_stage("sync_tiny", data_dir, workdir / "sync", _SYNC_STEPS.value)
            ev = result.eval_metrics  # the multi-way expert's pair_accuracy: in sync vs one shifted window
            acc = ev.get("eval/pair_accuracy", ev["eval/accuracy"])
            useful = acc >= EXPERT_USEFUL_ACCURACY
            expert_dir = workdir / "sync" if useful else None
            print(f"expert: held-out accuracy {acc:.3f} on in-sync vs shifted pairs (chance 0.5)"
                  + ("" if useful else f"; below {EXPERT_USEFUL_ACCURACY}, so stage 1 trains its own audio "
                     f"encoder and lip sync is not scored (the expert needs a longer run: "
                     f"2000 steps reach 0.88: launch/train.py --config=configs/expression.py:sync_tiny "
                     f"--config.num_steps=2000)"))
        _train_expression_stage("stage1_tiny", data_dir, workdir / "stage1", _STAGE1_STEPS.value,
                                expert=str(expert_dir or ""))
        stage2_dir = None
        if _STAGE2_STEPS.value > 0:
            _train_expression_stage("stage2_tiny", data_dir, workdir / "stage2", _STAGE2_STEPS.value,
                                    stage1=str(workdir / "stage1"))
            stage2_dir = workdir / "stage2"
        report = expression_eval.evaluate_runs(data_dir, stage1_dir=workdir / "stage1", stage2_dir=stage2_dir,
                                               expert_dir=expert_dir, max_clips=_EVAL_CLIPS.value)
        print(f"held-out expression, {_EVAL_CLIPS.value} clips, 30-frame windows (gohd_jax/eval/expression.py):")
        print(expression_eval.format_report(report))

    video_lines = []
    if min(_ANIMATOR_STEPS.value, _POSE_STEPS.value, _GAZE_STEPS.value, _STAGE1_STEPS.value) > 0:
        print("\n== gohd animate with the tiny models (gohd_jax/infer)")
        video_lines = _render_videos(workdir, data_dir)
        print("\n".join(video_lines))

    preview = workdir / "synthetic_preview.png"
    _preview(clips, preview)
    print(f"\npreview     {preview} (rows: clips, columns: frames across each clip)")
    print(_real_media_summary())
    if video_lines:
        print("\nvideos:\n  " + "\n  ".join(v.split(":")[0].replace("video       ", "") for v in video_lines
                                           if v.endswith("s)")))
    print(f"\nDone. Inspect with: gohd-data info {data_dir}   |   gohd-data sample {data_dir} --stage motion")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    app.run(main)
