"""Expression: the lip-sync expert (SyncNet), stage 1 (frame-wise lips) and stage 2 (LSTM controls).

    python launch/train.py --config=configs/expression.py:sync_tiny --workdir=workdir/sync \
        --config.data.dir=workdir/demo/data/synthetic

Variants (``_tiny``: narrow models that train on CPU in minutes, for ``make demo``):
  sync, sync_tiny   the lip-sync expert: Wav2Lip's SyncNet_color trained with BCE on in-sync vs
                    shifted (mel window, 5 lower-half face crops) pairs. Wav2Lip's lr 1e-4, batch 64.
  sync_mouth, sync_mouth_tiny
                    a coefficient-space expert (MouthSyncNet: the mel window against the mouth
                    expression coefficients of the 5 frames), multi-way; stage 1's sync loss.
  stage1, stage1_tiny
                    frame-wise expression from audio + exp0 + the 21 ground-truth controls, MSE;
                    the audio encoder from the expert run in task.expert, frozen (empty: trained);
                    + task.loss.sync x (1 - cos) through the frozen task.sync_expert run.
  stage2, stage2_tiny
                    the control generator on the frozen stage 1 of task.stage1 (an LSTM, or
                    the transformer with --config.task.model.control_generator=transformer);
                    expression MSE + the blink distribution term (task.loss.blink).

    python launch/train.py --config=configs/expression.py:stage1_tiny --workdir=workdir/stage1 \
        --config.task.expert=workdir/sync
    python launch/train.py --config=configs/expression.py:stage2_tiny --workdir=workdir/stage2 \
        --config.task.stage1=workdir/stage1
"""

import ml_collections

from configs import common

VARIANTS = ("sync", "sync_tiny", "sync_mouth", "sync_mouth_tiny", "stage1", "stage1_tiny", "stage2",
            "stage2_tiny")


def _base() -> ml_collections.ConfigDict:
    c = common.base()
    c.batch_size = 64
    c.num_steps = 200_000
    c.log_every = 100
    c.eval_every = 5000
    c.eval_steps = 8
    c.checkpoint_every = 5000
    c.ema_decay = 0.0
    c.data = ml_collections.ConfigDict({"dir": "workdir/demo/data/synthetic", "heldout_fraction": 0.25,
                                        "num_workers": 4})
    return c


def get_config(variant: str = "sync_tiny") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    stage, _, size = variant.partition("_")
    mouth = size.startswith("mouth")
    size = size.removeprefix("mouth").lstrip("_")
    c = _base()
    if stage == "sync":
        c.task_name = "syncnet"
        # loss: "bce" (Wav2Lip's, one in-sync-or-shifted pair per sample) or "multiway" (the
        # in-sync window among `negatives` shifted ones of the same clip; see tasks/syncnet.py).
        c.task = ml_collections.ConfigDict({"learning_rate": 1e-4, "loss": "bce", "negatives": 0,
                                            "temperature": 0.1})
        c.task.model = ml_collections.ConfigDict({"preset": "official"})
        if size == "tiny":
            c.update(batch_size=32, num_steps=600, log_every=50, eval_every=300, eval_steps=4,
                     checkpoint_every=300)
            c.data.num_workers = 0
            c.task.learning_rate = 1e-3
            c.task.model.preset = "tiny"
            # The synthetic clips frame the head loosely: the lower half barely holds the mouth.
            c.task.model.face_box = (0.40, 0.80, 0.2, 0.8)  # models.syncnet.SYNTHETIC_MOUTH
            # 400 steps: multi-way (7 negatives) held-out pair accuracy 0.70, 8-way 0.26 (chance
            # 0.125); Wav2Lip's BCE 0.58 (0.47 with the lower half); BENCHMARKS.md.
            c.task.loss, c.task.negatives = "multiway", 7
        # visual: "face" (pixels, SyncNet) or "mouth" (MouthSyncNet on the mouth expression
        # coefficients of the 5 frames: stage 1's sync loss, task.sync_expert there)
        c.task.visual = "face"
        if mouth:
            c.task.visual = "mouth"
            c.task.model.mouth_dims = (0, 1, 2)
            c.task.loss, c.task.negatives = "multiway", 7
        return c
    c.task_name = f"expression_{stage}"
    c.ema_decay = 0.999
    c.data.window = 30
    # mouth_dims: the expression coefficients the mouth metrics read (synthetic data: jaw, width,
    # rounding; for BFM expressions pick the mouth-related coefficients of your data).
    c.task = ml_collections.ConfigDict({"learning_rate": 1e-4, "controls": 21, "mouth_dims": (0, 1, 2),
                                        "expert": "", "stage1": ""})
    c.task.model = ml_collections.ConfigDict({"preset": "official"})
    c.task.loss = ml_collections.ConfigDict({"blink": 1.0})
    if stage == "stage1":  # optional sync loss through a frozen sync_mouth* expert run
        c.task.sync_expert = ""
        c.task.loss.sync = 0.0
    if stage == "stage2":
        c.task.model.control_generator = "lstm"  # or "transformer" (TwoStageTransGenerator)
        # samples: noise draws per window, the best of which the expression + control error counts
        # (a "variety" loss: the draws spread over when a blink may come instead of averaging it away)
        c.task.samples = 1
        c.task.loss.controls = 0.0
    if size == "tiny":
        c.update(batch_size=16, num_steps=600 if stage == "stage1" else 400, log_every=50,
                 eval_every=200, eval_steps=4, checkpoint_every=200, ema_decay=0.99)
        c.data.num_workers = 0
        c.task.learning_rate = 2e-3
        c.task.model.preset = "tiny"
        if stage == "stage2":
            # 1200 steps, best of 8 draws, controls weighted 1, no EMA (averaging the weights of a
            # noise-triggered generator smooths its blinks away: 12.5 blinks/min vs 6.9 with EMA 0.99;
            # ground truth 16); BENCHMARKS.md.
            c.update(num_steps=1200, ema_decay=0.0, eval_every=400, checkpoint_every=400)
            c.task.samples, c.task.loss.controls = 8, 1.0
    return c
