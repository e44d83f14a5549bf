"""Turning the unpickled tree into plain Python + numpy (and wrapping its errors in the source)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import TorchCheckpointError
from .frozen import _SafeFunction
from .standins import _LegacyTensor, _NamespaceRecord, _NumpyArrayRecord, _StorageType, _TensorType, _TorchDtype
from .storage import _PendingTensor, _Storage


def _finalize(obj, source: str):
    memo: dict[int, Any] = {}

    def walk(x):
        if isinstance(x, (str, bytes, int, float, bool, complex, type(None), np.generic, np.ndarray)):
            return x
        key = id(x)
        if key in memo:
            return memo[key]
        if isinstance(x, (_PendingTensor, _LegacyTensor)):
            out = memo[key] = x.materialize()
        elif isinstance(x, _NumpyArrayRecord):
            if x.array is None:
                raise TorchCheckpointError(f"{source}: numpy array without data")
            out = memo[key] = x.array
        elif isinstance(x, _NamespaceRecord):
            out = memo[key] = {}
            for k, v in x.items.items():
                out[walk(k)] = walk(v)
        elif isinstance(x, dict):  # dict and OrderedDict
            out = memo[key] = {}
            for k, v in x.items():
                out[walk(k)] = walk(v)
        elif isinstance(x, list):
            out = memo[key] = []
            out.extend(walk(v) for v in x)
        elif isinstance(x, tuple):
            out = memo[key] = tuple(walk(v) for v in x)
        elif isinstance(x, (set, frozenset)):
            out = memo[key] = type(x)(walk(v) for v in x)
        elif isinstance(x, bytearray):
            out = memo[key] = bytes(x)
        elif isinstance(x, _TorchDtype):
            out = memo[key] = x.dtype
        elif isinstance(x, _Storage):  # a bare storage (torch.save(t.untyped_storage()))
            out = memo[key] = x.typed().copy()
        elif isinstance(x, (_StorageType, _SafeFunction, _TensorType, type)):
            # A bare storage, type or function object in the data: no array meaning; name it.
            out = memo[key] = repr(x)
        else:
            raise TorchCheckpointError(f"{source}: unexpected object {type(x).__name__} in the pickle")
        return out

    try:
        return walk(obj)
    except RecursionError:
        raise TorchCheckpointError(f"{source}: containers nested too deeply") from None


def _finish(obj, source: str, depth: int):
    try:
        if depth > 0 and isinstance(obj, _Storage):
            # A nested archive holding one storage: pull its bytes now, while the archive is open.
            raw = obj.typed().view(np.uint8).copy()
            return _Storage(obj.key, obj.dtype, obj.numel, 0, lambda r=raw: r, False)
        return _finalize(obj, source)
    except TorchCheckpointError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except RecursionError:
        raise TorchCheckpointError(f"{source}: containers nested too deeply") from None
    except (TypeError, ValueError) as e:  # e.g. a tensor used as a dict key
        raise TorchCheckpointError(f"{source}: malformed checkpoint contents ({e})") from None
