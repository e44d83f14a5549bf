"""The fields every stage config shares: run bookkeeping, mesh, sharding, and the accelerator
settings (precision, rematerialisation, the persistent compilation cache).

    from configs import common
    c = common.base()        # then the stage's own fields
    common.rescale_batch(c, 64, lr_keys=("task.learning_rate",))  # a per-hardware variant

Accelerator settings (``gohd_jax/nn/policy.py``, ``gohd_jax/compile_cache.py``):
  precision      auto | float32 | bfloat16. auto = bfloat16 compute on GPU and TPU, float32 on
                 CPU, decided by the platform the step is compiled for. Parameters, optimizer
                 state, losses and the numerically delicate parts stay float32 either way.
  remat          none | blocks | full: rematerialise each block (encoder/decoder blocks,
                 conformer layers, expression stages) or the whole forward in the backward pass.
  ema_warmup     True (default): the EMA's decay at step t is min(ema_decay, (1 + t) / (10 + t))
                 (the warm-up diffusers' EMAModel uses), so that a short run's EMA is not
                 dominated by the random initial weights (decay 0.99 still holds 13% of them
                 after 200 steps; the demo's gaze sampler came out 2.3x too jittery from that).
                 Long runs are unaffected (the decay reaches 0.999 at step 8991). Stages set
                 ema_decay themselves (0 = no EMA).
  compile_cache  enabled (default True) and dir ("" = the user cache folder,
                 ~/.cache/gohd_jax/xla or $XDG_CACHE_HOME/gohd_jax/xla): JAX's persistent
                 compilation cache, so a resumed run skips its compiles.
"""

import math

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.keep_checkpoints = 3
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    c.sharding_rules = ((".*", "fsdp"),)
    c.precision = "auto"
    c.remat = "none"
    c.ema_warmup = True
    c.compile_cache = ml_collections.ConfigDict({"enabled": True, "dir": ""})
    return c


def rescale_batch(c: ml_collections.ConfigDict, batch: int, *, lr_keys: tuple[str, ...]) -> ml_collections.ConfigDict:
    """``c`` at global batch ``batch`` instead of its own (a per-hardware variant, so that the
    batch splits over the chips): the learning rates at ``lr_keys`` (dotted paths) scale by
    sqrt(batch / old) (the square-root rule for Adam-type optimisers: a rule of thumb, not a tuned
    value), and ``num_steps`` and the eval / checkpoint / log intervals by old / batch, so the run
    sees as many samples and evaluates as often per sample. Returns ``c``."""
    old = int(c.batch_size)
    factor = batch / old
    for key in lr_keys:
        *path, last = key.split(".")
        node = c
        for p in path:
            node = node[p]
        node[last] = float(node[last]) * math.sqrt(factor)
    c.batch_size = batch
    for key in ("num_steps", "eval_every", "checkpoint_every", "log_every"):
        if int(c.get(key, 0) or 0):
            c[key] = max(1, round(int(c[key]) / factor))
    return c
