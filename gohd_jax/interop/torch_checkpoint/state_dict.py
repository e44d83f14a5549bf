"""Picking the flat ``name -> array`` state dict out of a loaded checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import CheckpointKeyError, TorchCheckpointError


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        shown = ", ".join(repr(k) for k in keys[:20])
        more = f", ... ({len(keys)} keys)" if len(keys) > 20 else ""
        return f"{{{shown}{more}}}"
    return type(obj).__name__


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def state_dict_from(obj, key: str | Sequence[str] | None = None,
                    strip_prefix: str | Sequence[str] | None | bool = None) -> dict[str, np.ndarray]:
    """Pick the flat ``name -> array`` state dict out of a loaded checkpoint.

    Args:
      obj: what :func:`load_torch_checkpoint` returned (or a path, loaded here).
      key: the entry holding the state dict (``"gen_pose"``, ``"model"``, ``"state_dict_G"``,
        ``"net_recon"``), or a sequence of keys for a nested one (``("model", "ema")``). ``None``:
        ``obj`` itself must be the state dict.
      strip_prefix: a prefix (or several, tried in order) removed from every key that starts with
        it; it is an error if no key does. ``None`` (default): strip ``"module."`` (DataParallel)
        only when every key starts with it. ``False``: keep the names as they are.

    Returns:
      ``{name: np.ndarray}`` in the file's order.

    Raises:
      CheckpointKeyError: ``key`` or ``strip_prefix`` not found; the message lists what exists.
      TorchCheckpointError: the selected entry is not a flat dict of arrays.
    """
    if isinstance(obj, (str, os.PathLike)):
        from . import load_torch_checkpoint  # the package's, looked up now: the package imports this module

        obj = load_torch_checkpoint(obj)
    path = [] if key is None else ([key] if isinstance(key, str) else list(key))
    node = obj
    for i, k in enumerate(path):
        where = "checkpoint" if i == 0 else "checkpoint" + "".join(f"[{p!r}]" for p in path[:i])
        if not isinstance(node, Mapping):
            raise CheckpointKeyError(f"cannot index {where} (a {type(node).__name__}) with {k!r}")
        if k not in node:
            candidates = [c for c, v in node.items() if _is_state_dict(v)]
            hint = f"; entries that are state dicts: {candidates}" if candidates else ""
            raise CheckpointKeyError(f"{where} has no key {k!r}; it has {_describe(node)}{hint}")
        node = node[k]
    if not _is_state_dict(node):
        where = "checkpoint" + "".join(f"[{p!r}]" for p in path)
        if isinstance(node, Mapping):
            candidates = [c for c, v in node.items() if _is_state_dict(v)]
            bad = next((k for k, v in node.items() if not isinstance(v, np.ndarray)), None)
            hint = (f"; pass key= one of {candidates}" if candidates
                    else f"; entry {bad!r} is a {type(node.get(bad)).__name__}, not an array")
            raise CheckpointKeyError(f"{where} is not a flat state dict: it has {_describe(node)}{hint}")
        raise TorchCheckpointError(f"{where} is a {type(node).__name__}, not a state dict")
    sd = dict(node)
    if strip_prefix is False:
        return sd
    if strip_prefix is None:
        if all(k.startswith("module.") for k in sd):
            return {k[len("module."):]: v for k, v in sd.items()}
        return sd
    prefixes = [strip_prefix] if isinstance(strip_prefix, str) else list(strip_prefix)
    if not any(k.startswith(p) for k in sd for p in prefixes):
        sample = list(sd)[:5]
        raise CheckpointKeyError(f"no key starts with {prefixes}; first keys: {sample}")
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        if k in out:
            raise TorchCheckpointError(f"stripping {prefixes} makes two entries named {k!r}")
        out[k] = v
    return out
