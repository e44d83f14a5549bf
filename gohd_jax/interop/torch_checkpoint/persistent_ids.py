"""Persistent ids (``('storage', StorageType, key, location, numel[, view])``) to storage references."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import TorchCheckpointError, UnsupportedCheckpointError
from .standins import _StorageType
from .storage import _Storage


def _decode(x):
    return x.decode("ascii") if isinstance(x, bytes) else x


def _storage_from_pid(pid, source, blobs: Callable[[str], np.ndarray], big_endian: bool,
                      cache: dict, legacy: bool):
    if not isinstance(pid, tuple) or not pid:
        raise TorchCheckpointError(f"{source}: bad persistent id {pid!r:.80}")
    kind = _decode(pid[0])
    if kind == "module":
        raise UnsupportedCheckpointError(
            f"{source}: pickles a whole nn.Module; load it in PyTorch and re-save its state_dict()")
    if kind != "storage" or len(pid) != (6 if legacy else 5):
        raise TorchCheckpointError(f"{source}: bad persistent id {pid!r:.80}")
    storage_type, key, location, numel = pid[1], _decode(pid[2]), _decode(pid[3]), pid[4]
    if not isinstance(storage_type, _StorageType):
        raise TorchCheckpointError(f"{source}: persistent id names no storage type ({storage_type!r:.60})")
    if not isinstance(key, str) or not isinstance(location, str) or not isinstance(numel, int) \
            or numel < 0 or "/" in key or ".." in key:
        raise TorchCheckpointError(f"{source}: bad storage reference {pid!r:.80}")
    dtype = storage_type.dtype
    view = pid[5] if legacy else None
    if view is None:
        cache_key = (key, dtype.str)
        if cache_key not in cache:
            cache[cache_key] = _Storage(key, dtype, numel, 0, lambda k=key: blobs(k), big_endian)
        return cache[cache_key]
    # Legacy storage views: (view_key, element offset, view numel) into the root storage.
    if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[1], int)
            and isinstance(view[2], int) and 0 <= view[1] and 0 <= view[2]
            and view[1] + view[2] <= numel):
        raise TorchCheckpointError(f"{source}: bad storage view {view!r:.80}")
    return _Storage(f"{key}[{view[1]}:+{view[2]}]", dtype, view[2], view[1] * dtype.itemsize,
                    lambda k=key: blobs(k), big_endian)
