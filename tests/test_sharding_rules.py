"""The parameter sharding rule table and its report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gohd_jax.parallel import make_mesh, param_shardings, sharding_report


def _tree():
    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    return {"enc": {"kernel": s(256, 512), "bias": s(512)}, "head": {"kernel": s(3, 4097)},
            "norm": {"scale": s(64, 64)}}


def test_rules_shard_big_divisible_arrays_and_say_why_the_others_stay_whole():
    mesh = make_mesh(2, 4, devices=jax.devices()[:8])
    rules = (("norm/.*", "replicate"), (".*", "fsdp"))
    specs = jax.tree.map(lambda sh: sh.spec, param_shardings(_tree(), mesh, rules))
    assert specs["enc"]["kernel"] == P(None, "fsdp") and specs["enc"]["bias"] == P()
    assert specs["head"]["kernel"] == P() and specs["norm"]["scale"] == P()
    rep = sharding_report(_tree(), mesh, rules)
    assert rep["fsdp"]["count"] == 1 and rep["fsdp"]["bytes"] == 256 * 512 * 4
    assert rep["small"]["examples"] == ["enc/bias"]  # 512 elements: the threshold counts elements
    assert rep["indivisible"]["examples"] == ["head/kernel"]  # 3 x 4097: no axis divides by 4
    assert rep["rule"]["examples"] == ["norm/scale"]
    assert "sharded over fsdp: 1 arrays, 0.5 MiB" in rep["summary"] and "head/kernel" in rep["summary"]
