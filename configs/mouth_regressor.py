"""The trainer's own test task: mel window -> mouth descriptor dims.

    python launch/train.py --config=configs/mouth_regressor.py:tiny \
        --config.data.dir=workdir/demo/data/synthetic --workdir=workdir/mouth

Variants: ``tiny`` (CPU, a minute), ``base`` (longer run, bigger batch).
"""

import ml_collections

from configs import common


def get_config(variant: str = "tiny") -> ml_collections.ConfigDict:
    c = common.base()
    c.task_name = "mouth_regressor"
    c.batch_size = 16          # global, split over processes and devices
    c.num_steps = 200
    c.log_every = 20
    c.eval_every = 100         # 0 = never
    c.eval_steps = 4
    c.checkpoint_every = 100
    c.ema_decay = 0.99         # 0 = no EMA
    c.data = ml_collections.ConfigDict({"dir": "workdir/demo/data/synthetic", "window": 8, "num_workers": 0})
    c.task = ml_collections.ConfigDict({"hidden": 128, "learning_rate": 1e-3, "target_dims": (0, 1, 2)})
    if variant == "base":
        c.update(batch_size=64, num_steps=5000, log_every=100, eval_every=1000, checkpoint_every=1000)
        c.task.hidden = 512
        c.data.num_workers = 2
    elif variant != "tiny":
        raise ValueError(f"unknown variant {variant!r}: choose tiny or base")
    return c
