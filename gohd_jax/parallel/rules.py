"""Parameter sharding from a small rule table.

A rule is ``(regex, how)``: the first regex that matches a parameter's path
(``"model/layer/kernel"``) decides. ``how`` is ``"replicate"`` or ``"fsdp"``;
``"fsdp"`` splits the parameter's largest axis divisible by the fsdp size over
the ``fsdp`` mesh axis and replicates parameters smaller than
``min_fsdp_size`` elements or with no divisible axis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DEFAULT_RULES: tuple[tuple[str, str], ...] = ((".*", "fsdp"),)


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES,
             min_fsdp_size: int = 2 ** 12) -> P:
    """The PartitionSpec of one parameter (see the module docstring)."""
    how = next((h for pattern, h in rules if re.fullmatch(pattern, path)), "replicate")
    if how not in ("replicate", "fsdp"):
        raise ValueError(f"sharding rule for {path!r}: {how!r} is not 'replicate' or 'fsdp'")
    n = mesh.shape["fsdp"]
    size = 1
    for d in shape:
        size *= d
    if how == "replicate" or n == 1 or size < min_fsdp_size:
        return P()
    axes = sorted(range(len(shape)), key=lambda a: -shape[a])
    for a in axes:
        if shape[a] % n == 0:
            spec = [None] * len(shape)
            spec[a] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES, min_fsdp_size: int = 2 ** 12):
    """NamedShardings for every array leaf of ``tree`` (abstract or concrete)."""
    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, spec_for(_path_str(path), shape, mesh, rules, min_fsdp_size))
    return jax.tree_util.tree_map_with_path(one, tree)
