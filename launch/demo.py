"""The main job on the embedded default (``make demo``).

Generates the synthetic talking-head dataset (resumable), verifies it, prints its summary, draws
one batch from each stage's Grain pipeline, trains every stage small (animator, pose, gaze, the
lip-sync expert, both expression stages), prints each one's held-out table against its
baselines, and renders side-by-side videos with ``gohd animate``'s engine (``launch/demo_videos.py``).

SIGTERM or Ctrl-C stops it within seconds (``gohd_jax.stopping``): a training in progress saves a
checkpoint, and rerunning the same command resumes (the dataset's finished shards and every
finished training are kept). JAX's persistent compilation cache is on, as for ``launch/train.py``
and ``gohd animate`` (``gohd_jax/compile_cache.py``: ``$GOHD_COMPILE_CACHE``, else
``~/.cache/gohd_jax/xla``; ``GOHD_COMPILE_CACHE=off`` turns it off), so a resumed or repeated
demo loads its programs instead of compiling them again.

    python launch/demo.py --workdir=workdir/demo [--config=configs/synthetic.py:demo] [--config.clips=96]
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from gohd_jax.stopping import StopOnSignal, Stopped  # noqa: E402

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
_STAGE2_STEPS = flags.DEFINE_integer("stage2_steps", 500, "Training steps of expression stage 2 (batch 16, "
                                     "best of 8 draws: ~3 steps/s on 2 cores; fewer steps blink less: 400 give "
                                     "~8 blinks/min, 1200 ~13, ground truth ~16).")
_EVAL_CLIPS = flags.DEFINE_integer("expression_eval_clips", 4, "Held-out clips the expression report uses.")
_VIDEO_SECONDS = flags.DEFINE_float("video_seconds", 8.0, "Length of the synthetic demo videos, s (at most the "
                                    "clips' 8 s; the real example renders its whole speech). The mouth-motion "
                                    "correlation is over these frames: 200 move less between seeds than 150.")
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


class _Clock:
    """Elapsed time since the demo started, and the stage it is in (for the stop message)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.stage = "starting"

    def elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def header(self, stage: str, text: str) -> None:
        self.stage = stage
        print(f"\n== [{self.elapsed()}] {text}", flush=True)


CLOCK = _Clock()


def _stop_message(stopped: Stopped, workdir: Path) -> str:
    return (f"\nStopped by {stopped.signal_name} after {CLOCK.elapsed()} (min:s), during: {CLOCK.stage}. "
            f"The partial work is in {workdir}/: the dataset's finished shards, every finished training, "
            f"and the last checkpoint of the one it interrupted (SIGTERM between steps saves one at the "
            f"stop; otherwise one is kept every quarter of a run). Run the same command again (make demo) "
            f"to resume: finished work is reused.")


class _StepLines(logging.Handler):
    """Prints the trainer's periodic ``step N/M ...`` lines (progress, losses, ETA) and its
    warnings, indented; the demo keeps absl at WARNING otherwise."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING or msg.startswith("step "):
            print(f"  {msg}", flush=True)


def _show_training_progress() -> None:
    logger = logging.getLogger("gohd_jax.train")
    logger.setLevel(logging.INFO)
    logger.addHandler(_StepLines())
    logger.propagate = False


def _train(trainer):
    """Runs (or resumes) a training; a SIGTERM during it saves a checkpoint and stops the demo.
    A run already finished (a resumed demo) is evaluated from its last checkpoint."""
    result = trainer.train()
    if result.status == "preempted":
        raise Stopped(signal.SIGTERM)
    if not result.eval_metrics and int(trainer.config.eval_every):
        result.eval_metrics = trainer.evaluate(trainer.final_state)
    return result


def _train_expression_stage(variant: str, data_dir: Path, run_dir: Path, steps: int, **task):
    from configs import expression
    from gohd_jax.train.tasks import get_task_class
    from gohd_jax.train.trainer import Trainer

    cfg = expression.get_config(variant)
    cfg.data.dir = str(data_dir)
    cfg.update(num_steps=steps, log_every=max(50, steps // 4), eval_every=steps,
               checkpoint_every=max(100, steps // 4))  # a stop loses at most a quarter
    if variant == "stage1_tiny":
        cfg.batch_size = 8  # the demo's budget; the config's 16 learns the same per example
    for k, v in task.items():
        cfg.task[k] = v
    return _train(Trainer(get_task_class(cfg.task_name)(cfg), cfg, run_dir))


def _train_animator(data_dir: Path, run_dir: Path, steps: int):
    """Trains the tiny animator; returns (result, trainer) for the held-out grid."""
    from configs import animator
    from gohd_jax.train.tasks.animator import AnimatorTask
    from gohd_jax.train.trainer import Trainer

    cfg = animator.get_config("tiny")
    cfg.data.dir = str(data_dir)
    cfg.update(num_steps=steps, log_every=max(50, steps // 4), eval_every=steps, eval_steps=4,
               checkpoint_every=max(100, steps // 4))  # a stop loses at most a quarter of the run
    trainer = Trainer(AnimatorTask(cfg), cfg, run_dir)
    return _train(trainer), trainer


def _train_motion(data_dir: Path, run_dir: Path, target: str, steps: int):
    """Trains the tiny pose or gaze denoiser; returns (result, trainer)."""
    from configs import motion
    from gohd_jax.train.tasks.motion_diffusion import MotionDiffusionTask
    from gohd_jax.train.trainer import Trainer

    cfg = motion.get_config(f"{target}_tiny")
    cfg.data.dir = str(data_dir)
    cfg.update(num_steps=steps, log_every=max(50, steps // 4), eval_every=steps,
               checkpoint_every=max(100, steps // 4))  # a stop loses at most a quarter
    trainer = Trainer(MotionDiffusionTask(cfg), cfg, run_dir)
    return _train(trainer), trainer


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
        rep = motion_eval.gaze_report(gen, held["gaze"])
        ratio = rep["generated"]["std"] / rep["ground_truth"]["std"]
        beats = rep["generated"]["fd"] < min(rep["hold_gaze0"]["fd"], rep["camera"]["fd"])
        return (f"held-out gaze, {len(gen)} clips sampled with DDPM-150 in {cfg.data.window}-frame windows; the "
                f"synthetic gaze ignores the audio, so it is judged as a distribution (gohd_jax/eval/motion.py):\n"
                + motion_eval.format_gaze_report(rep)
                + f"\n  generated temporal std / ground truth's: {ratio:.2f} (target 0.75-1.25); Frechet distance "
                  f"{'below' if beats else 'NOT below'} both baselines'")
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


def _render_videos(workdir: Path, synth, data_dir: Path, seconds: float) -> tuple[list[str], str]:
    """The demo's videos (``launch/demo_videos.py``); returns (video lines, mouth-score table)."""
    import numpy as np

    from data_pipelines import pipelines, records
    from gohd_jax import shared_data
    from gohd_jax.infer import cli
    from gohd_jax.infer.animate import Animate, ClipJob
    from gohd_jax.infer.bundle import load_bundle
    from gohd_jax.infer.reference import References
    from launch import demo_videos as V

    out_dir = workdir / "videos"
    out_dir.mkdir(parents=True, exist_ok=True)
    index = records.ClipDataset(data_dir).index
    rows = [index[i] for i in pipelines.select_clips(index, split="heldout", heldout_fraction=0.25, min_frames=1)]
    first = rows[0]
    other = next((r for r in rows if r["identity_id"] != first["identity_id"]), rows[-1])
    held = V.synth_clip(synth, V.clip_index(first["clip_id"]), seconds)
    engine = Animate(load_bundle(workdir))
    size = engine.size
    d0, c0 = held.descriptors[0], held.controls[0]
    lines = []

    # 1. the held-out identity speaking its own audio, next to the ground truth
    job = ClipJob("heldout", held.frames[0], d0, c0, held.audio, seed=0)
    plain = V.render(engine, job)
    plain_drawn = V.drawn(held.identity, plain.descriptors, size)
    path = V.write_video(out_dir / "heldout_synthetic.mp4", [plain_drawn, plain.frames, held.frames],
                         ["generated motion (drawn)", "learned animator", "ground truth"], held.audio)
    lines.append(V.video_line(path, f"held-out identity {first['identity_id']} speaking its own held-out audio",
                              len(plain.frames), plain.seconds))
    np.savez(out_dir / "heldout_synthetic_descriptors.npz", generated=plain.descriptors,
             ground_truth=held.descriptors)
    scores = V.mouth_scores(held, plain.frames, plain_drawn, size)
    table = V.format_mouth_scores(scores, len(plain.frames))

    refs = References()
    # 2. driven by another held-out clip's description (gohd animate --drive DESC.npz)
    ref = V.synth_clip(synth, V.clip_index(other["clip_id"]), seconds)
    npz = V.description(ref, "synthetic reference").save(out_dir / "reference_drive.npz")
    values = {k: str(npz) for k in ("pose", "exp", "gaze", "blink")}
    job = ClipJob("driven", held.frames[0], d0, c0, ref.audio,
                  cli.clip_controls(refs, values, d0, c0, ref.audio), seed=0)
    driven = V.render(engine, job)
    path = V.write_video(out_dir / "driven_by_video.mp4",
                         [ref.frames, V.drawn(held.identity, driven.descriptors, size), driven.frames],
                         ["reference video", "its motion (drawn)", "learned animator"], ref.audio)
    lines.append(V.video_line(path, f"the held-out face driven by another clip's description ({npz.name}: pose "
                              f"relative, expression, gaze, blinks; --drive)", len(driven.frames), driven.seconds))

    # 3. emotion transfer from a smiling reference (gohd animate --emotion DESC.npz)
    happy = V.smiling(ref)
    npz = V.description(happy, "smiling synthetic reference").save(out_dir / "reference_emotion.npz")
    job = ClipJob("emotion", held.frames[0], d0, c0, held.audio,
                  cli.clip_controls(refs, dict(cli.CONTROL_DEFAULTS), d0, c0, held.audio, emotion=str(npz)), seed=0)
    emo = V.render(engine, job)
    path = V.write_video(out_dir / "emotion_transfer.mp4",
                         [happy.frames, V.drawn(held.identity, emo.descriptors, size), emo.frames, plain.frames],
                         ["emotion reference", "with its emotion (drawn)", "learned animator",
                          "without (animator)"], held.audio)
    smile = (emo.descriptors[:, V.SMILE].mean(), plain.descriptors[:, V.SMILE].mean())
    lines.append(V.video_line(path, f"the same clip with a smiling reference's emotion ({npz.name}; --emotion): "
                              f"mean smile {smile[0]:.2f} vs {smile[1]:.2f} without", len(emo.frames), emo.seconds))

    # 4. the real example portrait and speech (shared folder), through gohd animate's own inputs
    image = shared_data.shared_path("assets", "gohd_examples", "source", "HDTF_0.jpg")
    speech = shared_data.shared_path("assets", "gohd_examples", "audios", "monalisa.mp3")
    if image is None or speech is None:
        lines.append("video       (no real example: " + shared_data.describe_missing("assets", "gohd_examples") + ")")
        return lines, table
    args = cli.build_parser().parse_args(["animate", "--checkpoint", str(workdir), "--image", str(image),
                                          "--audio", str(speech)])
    clip = cli.prepare_single(args, progress=False)
    real = V.render(engine, clip.job)
    path = V.write_video(out_dir / "real_HDTF_0_monalisa.mp4",
                         [V.drawn(held.identity, real.descriptors, size), real.frames],
                         ["generated motion (drawn)", "learned animator"], clip.job.wav)
    lines.append(V.video_line(path, "the real portrait HDTF_0.jpg driven by monalisa.mp3 (shared examples) with "
                              "the tiny synthetic-trained models", len(real.frames), real.seconds))
    return lines, table


def _demo(workdir: Path) -> None:
    from data_pipelines import pipelines, records
    from data_pipelines.synthetic.cli import write_synthetic_dataset
    from data_pipelines.synthetic.generator import SynthConfig

    cfg = _CONFIG.value
    data_dir = workdir / "data" / "synthetic"
    synth = SynthConfig(size=cfg.size, seconds=cfg.seconds, num_identities=cfg.identities, seed=cfg.seed)
    CLOCK.header("the dataset", f"GoHD-JAX demo: synthetic talking-head dataset ({cfg.variant}) -> {data_dir}")
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
    CLOCK.header("the Grain pipelines", "One batch of 4 from each stage's Grain pipeline (train split; held-out "
                 "identities excluded)")
    for stage in pipelines.STAGES:
        window = min(pipelines.DEFAULT_WINDOW[stage], frames)
        ds = pipelines.make_dataset(stage, clips, window=window, shard_index=0, shard_count=1)
        batch = next(pipelines.make_iterator(ds, 4))
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in batch.items() if k not in ("clip_index", "start"))
        print(f"{stage:10s} window {window:3d}: {shapes}")

    if _ANIMATOR_STEPS.value > 0:
        CLOCK.header("the animator's training", f"The tiny animator (GoHD's Generator_Semantic, 64 px) as a "
                     f"self-reconstruction GAN, {_ANIMATOR_STEPS.value} steps (configs/animator.py:tiny)")
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
        CLOCK.header(f"the {target} denoiser's training", f"The tiny {target} diffusion denoiser (GoHD's TISA "
                     f"conformer), {steps} steps (configs/motion.py:{target}_tiny)")
        result, trainer = _train_motion(data_dir, workdir / target, target, steps)
        ev = result.eval_metrics
        print(f"{result.status} at step {result.step}: held-out eps-MSE {ev['eval/loss']:.4f} "
              f"(predicting zero: {ev['eval/loss_predict_zero']:.4f})")
        print(_motion_report(trainer, data_dir, target, workdir / f"{target}_heldout.npz"))

    if _STAGE1_STEPS.value > 0:
        CLOCK.header("the expression stages' training", f"Expression (configs/expression.py): the lip-sync "
                     f"expert ({_SYNC_STEPS.value} steps), stage 1 ({_STAGE1_STEPS.value}), stage 2's LSTM on "
                     f"frozen stage 1 ({_STAGE2_STEPS.value})")
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
        CLOCK.header("rendering the videos", "gohd animate's engine with the tiny models (gohd_jax/infer), "
                     "side-by-side panels (launch/demo_videos.py)")
        video_lines, mouth_table = _render_videos(workdir, synth, data_dir, _VIDEO_SECONDS.value)
        print("\n".join(video_lines))
        print(mouth_table)

    preview = workdir / "synthetic_preview.png"
    _preview(clips, preview)
    print(f"\npreview     {preview} (rows: clips, columns: frames across each clip)")
    print(_real_media_summary())
    if video_lines:
        print("\nvideos (each with a still of its middle frame beside it, .png):\n  "
              + "\n  ".join(v.split(":")[0].replace("video       ", "") for v in video_lines if v.startswith("video ")
                            and v.endswith(" s")))
    print(f"\nDone in {CLOCK.elapsed()} (min:s). Inspect with: gohd-data info {data_dir}   |   "
          f"gohd-data sample {data_dir} --stage motion")


def main(argv) -> None:
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows in `make demo | tee log` too
    _show_training_progress()
    workdir = Path(_WORKDIR.value)
    from gohd_jax import compile_cache

    cache = compile_cache.enable()  # before the first compile
    print(f"compilation cache: {cache or 'off'}", flush=True)

    def on_stop(stopped: Stopped) -> None:
        print(_stop_message(stopped, workdir), flush=True)

    with StopOnSignal(on_stop):
        try:
            _demo(workdir)
        except Stopped as stopped:
            on_stop(stopped)
            sys.exit(stopped.exit_code)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    app.run(main)
