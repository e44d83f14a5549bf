"""The fields every stage config shares: run bookkeeping, mesh, sharding, and the accelerator
settings (precision, rematerialisation, the persistent compilation cache).

    from configs import common
    c = common.base()        # then the stage's own fields

Accelerator settings (``gohd_jax/nn/policy.py``, ``gohd_jax/compile_cache.py``):
  precision      auto | float32 | bfloat16. auto = bfloat16 compute on GPU and TPU, float32 on
                 CPU, decided by the platform the step is compiled for. Parameters, optimizer
                 state, losses and the numerically delicate parts stay float32 either way.
  remat          none | blocks | full: rematerialise each block (encoder/decoder blocks,
                 conformer layers, expression stages) or the whole forward in the backward pass.
  compile_cache  enabled (default True) and dir ("" = the user cache folder,
                 ~/.cache/gohd_jax/xla or $XDG_CACHE_HOME/gohd_jax/xla): JAX's persistent
                 compilation cache, so a resumed run skips its compiles.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.keep_checkpoints = 3
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    c.sharding_rules = ((".*", "fsdp"),)
    c.precision = "auto"
    c.remat = "none"
    c.compile_cache = ml_collections.ConfigDict({"enabled": True, "dir": ""})
    return c
