"""Pose and gaze motion: GoHD's conformer (TISA) diffusion denoisers, epsilon-prediction MSE.

    python launch/train.py --config=configs/motion.py:pose_tiny --workdir=workdir/pose \
        --config.data.dir=workdir/demo/data/synthetic

Variants:
  pose_tiny, gaze_tiny  4 layers x 64 channels on 50-frame windows, motion scaled up by
                        task.data_scale: train on CPU in minutes (make demo).
  pose, gaze            the official size (20 layers x 256 channels, 72.7 M parameters), GoHD's
                        params.py: batch 8, lr 6e-4, no gradient clipping, 150-frame windows.
  pose_h100x8, gaze_h100x8, pose_v5e16, gaze_v5e16
                        official, set for one node of 8 H100s / a TPU v5e-16 slice: the release's
                        batch 8 cannot split over 16 chips and leaves 8 GPUs at one window each,
                        so global batch 32 (4 per GPU) / 32 (2 per chip), bfloat16, data-parallel;
                        lr 6e-4 x sqrt(32/8) = 1.2e-3 and 50k steps (the same samples as the
                        release's 200k x 8; ``common.rescale_batch``). Fit: BENCHMARKS.md "Fit on
                        accelerators" (the train step at batch 8-16 needs under 2 GiB per chip).

Data: 150-frame windows from the motion pipeline; ``data.condition`` "mel100" (the correctly
aligned 100 Hz mel, default) or "release" (the release's 80 Hz mel read as 100 Hz, to fine-tune
official weights). ``task.cond_dropout`` > 0 trains for classifier-free guidance (off: faithful).
"""

import ml_collections

from configs import common


HARDWARE = {"h100x8": 32, "v5e16": 32}  # per-hardware variants: global batch
# ... and Grain worker processes per host (BENCHMARKS.md "Feeding a host": at most ~1,500 windows/s
# for a node of 8 H100s, ~250 per v5e host, against ~700 per core at schema 2).
HARDWARE_WORKERS = {"h100x8": 3, "v5e16": 1}


def get_config(variant: str = "pose_tiny") -> ml_collections.ConfigDict:
    target, _, size = variant.partition("_")
    if target not in ("pose", "gaze") or size not in ("", "tiny", *HARDWARE):
        raise ValueError(f"unknown variant {variant!r}: choose pose, gaze, pose_tiny, gaze_tiny, or "
                         f"pose_/gaze_ + {' / '.join(HARDWARE)}")
    if size in HARDWARE:
        c = common.rescale_batch(get_config(target), HARDWARE[size], lr_keys=("task.learning_rate",))
        c.precision = "bfloat16"
        c.mesh.update(data=-1, fsdp=1)
        c.data.num_workers = HARDWARE_WORKERS[size]
        return c
    c = common.base()
    c.task_name = "motion_diffusion"
    c.batch_size = 8
    c.num_steps = 200_000
    c.log_every = 100
    c.eval_every = 5000
    c.eval_steps = 8
    c.checkpoint_every = 5000
    c.ema_decay = 0.999
    c.data = ml_collections.ConfigDict({"dir": "workdir/demo/data/synthetic", "window": 150,
                                        "condition": "mel100", "heldout_fraction": 0.25,
                                        "num_workers": 4})
    c.task = ml_collections.ConfigDict({"target": target, "learning_rate": 6e-4, "grad_clip": 0.0,
                                        "cond_dropout": 0.0, "data_scale": 1.0})
    c.task.model = ml_collections.ConfigDict({"preset": "official"})
    if size == "tiny":
        c.update(batch_size=16, num_steps=4000, log_every=100, eval_every=1000, eval_steps=4,
                 checkpoint_every=1000, ema_decay=0.99)
        c.data.update(num_workers=0, window=50)  # 2 s windows: 3x fewer frames, 9x less attention
        c.task.learning_rate = 2e-3
        # The synthetic heads move a few hundredths of a radian: learn motion x 4 (gaze x 2).
        c.task.data_scale = 4.0 if target == "pose" else 2.0
        c.task.model = ml_collections.ConfigDict({
            "preset": "tiny", "local_dim": 320, "residual_layers": 4, "residual_channels": 64,
            "embedding_dim": 128, "num_heads": 4, "d_ff": 128, "num_kernels": 5, "seq_len": 50})
    return c
