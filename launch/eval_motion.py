"""Samples the held-out clips with a trained pose or gaze denoiser and scores them.

    python launch/eval_motion.py --config=configs/motion.py:pose_tiny --workdir=workdir/pose \
        --config.data.dir=workdir/demo/data/synthetic [--sampler=ddpm] [--steps=25 --eta=1.0]

The run in ``--workdir`` is restored from its latest checkpoint; if it has not reached
``config.num_steps`` yet, it is trained (resumed) up to there first. The EMA denoiser then
samples every held-out clip from its first frame in ``config.data.window``-frame windows, and
pose is scored against the still-head and random-walk baselines (``gohd_jax/eval/motion.py``:
beat alignment, Frechet distance, diversity); gaze gets its temporal std and mean error. The
generated and true motion go to ``WORKDIR/heldout_motion.npz``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/motion.py:VARIANT", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's folder.", required=True)
_SAMPLER = flags.DEFINE_enum("sampler", "ddpm", ["ddpm", "ddim"], "ddpm: the release's 150 steps; ddim: --steps.")
_STEPS = flags.DEFINE_integer("steps", 25, "DDIM updates (with --sampler=ddim).")
_ETA = flags.DEFINE_float("eta", 1.0, "DDIM stochasticity, 0 (deterministic) .. 1.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv) -> None:
    del argv
    import jax
    import numpy as np

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("gohd_jax").setLevel(logging.INFO)
    from data_pipelines.records import DatasetError
    from gohd_jax.diffusion import samplers
    from gohd_jax.eval import motion as motion_eval
    from gohd_jax.train.tasks.motion_diffusion import MotionDiffusionTask
    from gohd_jax.train.trainer import Trainer

    cfg = _CONFIG.value
    if cfg is None or cfg.task_name != "motion_diffusion":
        logging.error("--config must be configs/motion.py:pose|gaze|pose_tiny|gaze_tiny")
        sys.exit(2)
    try:
        spec = samplers.SamplerSpec(_SAMPLER.value, 150 if _SAMPLER.value == "ddpm" else _STEPS.value,
                                    _ETA.value if _SAMPLER.value == "ddim" else 0.0)
        trainer = Trainer(MotionDiffusionTask(cfg), cfg, _WORKDIR.value)
        trainer.train()
        held = motion_eval.heldout_motion(cfg.data.dir, heldout_fraction=float(cfg.data.heldout_fraction),
                                          condition=str(cfg.data.condition))
    except (DatasetError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(1)
    target = cfg.task.target
    model = trainer.ctx.ema_model(trainer.final_state, "denoiser")
    gen = motion_eval.generate_motion(model, held["cond"], held[target][:, 0], residual=target == "pose",
                                      key=jax.random.key(_SEED.value), spec=spec, window=int(cfg.data.window),
                                      data_scale=float(cfg.task.data_scale))
    np.savez(Path(_WORKDIR.value) / "heldout_motion.npz", generated=gen, ground_truth=held[target])
    print(f"{len(gen)} held-out clips x {gen.shape[1]} frames, {spec.method}-{len(samplers.chain_for(spec)['n'])}, "
          f"{cfg.data.window}-frame windows")
    if target == "pose":
        print(motion_eval.format_report(motion_eval.motion_report(gen, held["pose"], held["cond"])))
    else:
        print(f"  gaze temporal std {gen.std(1).mean():.4f} rad (ground truth {held['gaze'].std(1).mean():.4f}), "
              f"mean |error| {np.abs(gen - held['gaze']).mean():.4f} rad")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    app.run(main)
