"""A plain pickle of data; torch tensors in it hold nested ``torch.save`` archives as their storages."""

from __future__ import annotations

import io

from .errors import TorchCheckpointError
from .finalize import _finish
from .frozen import _SafeFunction
from .storage import _Storage
from .unpickler import _RestrictedUnpickler, _unpickle

_MAX_NESTING = 2  # torch.storage._load_from_bytes nests archives one level; allow no deeper


def _load_plain_pickle(f, source: str, depth: int):
    nested_cache: dict = {}

    def load_from_bytes(data):
        # torch.storage._load_from_bytes(b): the storage was itself torch.save'd into b.
        if not isinstance(data, (bytes, bytearray)):
            raise TorchCheckpointError(f"{source}: _load_from_bytes expects bytes")
        if depth + 1 > _MAX_NESTING:
            raise TorchCheckpointError(f"{source}: torch archives nested too deeply")
        from .dispatch import _load_any  # imported here: dispatch imports this module

        inner = _load_any(io.BytesIO(bytes(data)), f"{source} (nested storage)", depth + 1)
        if not isinstance(inner, _Storage):
            raise TorchCheckpointError(f"{source}: _load_from_bytes data is not a storage")
        key = f"nested{len(nested_cache)}"
        nested_cache[key] = inner
        return inner

    fns = {("torch.storage", "_load_from_bytes"): _SafeFunction(
        "torch.storage._load_from_bytes", load_from_bytes)}

    class _Plain(_RestrictedUnpickler):
        def find_class(self, module, name):
            if (module, name) in fns:
                return fns[(module, name)]
            return super().find_class(module, name)

    return _finish(_unpickle(f, source, None, _Plain), source, depth)
