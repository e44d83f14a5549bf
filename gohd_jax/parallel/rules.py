"""Parameter sharding from a small rule table.

A rule is ``(regex, how)``: the first regex that matches a parameter's path
(``"model/layer/kernel"``) decides. ``how`` is ``"replicate"`` or ``"fsdp"``;
``"fsdp"`` splits the parameter's largest axis divisible by the fsdp size over
the ``fsdp`` mesh axis and replicates parameters smaller than
``min_fsdp_size`` elements (a count of elements, not bytes: 4096 elements are
16 KiB in float32) or with no divisible axis. ``sharding_report`` says which
parameters went which way and why (the trainer logs it when fsdp > 1).
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


def _decide(path: str, shape: Sequence[int], mesh: Mesh, rules, min_fsdp_size: int) -> tuple[P, str]:
    """(PartitionSpec, why): why is "fsdp", "rule" (a replicate rule), "small" (under
    ``min_fsdp_size`` elements), "indivisible" (no axis divides by the fsdp size) or "no fsdp"."""
    how = next((h for pattern, h in rules if re.fullmatch(pattern, path)), "replicate")
    if how not in ("replicate", "fsdp"):
        raise ValueError(f"sharding rule for {path!r}: {how!r} is not 'replicate' or 'fsdp'")
    n = mesh.shape["fsdp"]
    size = 1
    for d in shape:
        size *= d
    if how == "replicate":
        return P(), "rule"
    if n == 1:
        return P(), "no fsdp"
    if size < min_fsdp_size:
        return P(), "small"
    axes = sorted(range(len(shape)), key=lambda a: -shape[a])
    for a in axes:
        if shape[a] % n == 0:
            spec = [None] * len(shape)
            spec[a] = "fsdp"
            return P(*spec), "fsdp"
    return P(), "indivisible"


def spec_for(path: str, shape: Sequence[int], mesh: Mesh, rules=DEFAULT_RULES,
             min_fsdp_size: int = 2 ** 12) -> P:
    """The PartitionSpec of one parameter (see the module docstring)."""
    return _decide(path, shape, mesh, rules, min_fsdp_size)[0]


def sharding_report(tree, mesh: Mesh, rules=DEFAULT_RULES, min_fsdp_size: int = 2 ** 12) -> dict:
    """{why: {"count", "bytes", "examples"}} over the array leaves of ``tree`` (see ``_decide``
    for the reasons; ``examples``: up to 3 paths), and ``summary``: one line for the log."""
    out: dict = {}

    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        _, why = _decide(_path_str(path), shape, mesh, rules, min_fsdp_size)
        nbytes = int(getattr(leaf, "size", 1)) * getattr(getattr(leaf, "dtype", None), "itemsize", 4)
        e = out.setdefault(why, {"count": 0, "bytes": 0, "examples": []})
        e["count"] += 1
        e["bytes"] += nbytes
        if len(e["examples"]) < 3:
            e["examples"].append(_path_str(path))

    jax.tree_util.tree_map_with_path(one, tree)
    labels = {"fsdp": "sharded over fsdp", "rule": "replicated by a rule", "small":
              f"replicated as small (< {min_fsdp_size} elements)", "indivisible":
              "replicated (no axis divisible by the fsdp size)", "no fsdp": "replicated (fsdp = 1)"}
    out["summary"] = "; ".join(f"{labels[k]}: {v['count']} arrays, {v['bytes'] / 2 ** 20:.1f} MiB"
                               + (f" (e.g. {', '.join(v['examples'])})" if k in ("indivisible", "rule") else "")
                               for k, v in out.items() if k in labels)
    return out


def param_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES, min_fsdp_size: int = 2 ** 12):
    """NamedShardings for every array leaf of ``tree`` (abstract or concrete)."""
    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, spec_for(_path_str(path), shape, mesh, rules, min_fsdp_size))
    return jax.tree_util.tree_map_with_path(one, tree)
