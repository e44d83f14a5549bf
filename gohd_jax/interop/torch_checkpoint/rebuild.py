"""Our implementations of the allowed callables: torch's tensor rebuilders (torch/_utils.py
signatures), ``OrderedDict``, ``torch.Size``, ``_codecs.encode``, a few builtins and numpy."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .errors import TorchCheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError
from .frozen import _FrozenMeta, _SafeFunction
from .standins import _NumpyArrayRecord, _require_tensor, _TensorType, _TorchDtype
from .storage import _make_tensor
from .validate import _int_tuple, _plain_numpy_dtype


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _TorchDtype):
        raise TorchCheckpointError(f"_rebuild_tensor_v3 expects a torch dtype, got {dtype!r:.60}")
    return _make_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    _require_tensor(data, "_rebuild_parameter")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    _require_tensor(data, "_rebuild_parameter_with_state")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(func, _SafeFunction):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with a non-allowed function {func!r:.60}")
    if not isinstance(new_type, (_TensorType, _FrozenMeta)):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 to a non-tensor type {new_type!r:.60}")
    if not isinstance(args, tuple):
        raise TorchCheckpointError("_rebuild_from_type_v2: args is not a tuple")
    return func(*args)


def _unsupported(what: str):
    def fail(*_args):
        raise UnsupportedCheckpointError(f"{what} are not supported by the torch-free reader")
    return fail


def _ordered_dict(*args):
    if len(args) > 1:
        raise TorchCheckpointError("OrderedDict takes at most one argument")
    return OrderedDict(*args)


def _torch_size(dims=()):
    return _int_tuple(tuple(dims), "torch.Size")


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or (index is not None and not isinstance(index, int)):
        raise TorchCheckpointError("bad torch.device arguments")
    return kind if index is None else f"{kind}:{index}"


def _get_layout(name):
    if not isinstance(name, str):
        raise TorchCheckpointError("bad layout name")
    return name


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles write bytes as _codecs.encode(str, 'latin1'). Only text codecs allowed.
    if not isinstance(obj, str) or encoding.replace("_", "-").lower() not in {
            "latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"}:
        raise UnsafeCheckpointError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return obj.encode(encoding, errors)


def _builtin(kind):
    def make(*args):
        if len(args) > (2 if kind is complex else 1):
            raise TorchCheckpointError(f"bad arguments to builtins.{kind.__name__}")
        if kind is complex:
            if not all(isinstance(a, (int, float)) for a in args):
                raise TorchCheckpointError("complex() takes numbers here")
        elif args and not isinstance(args[0], (list, tuple, set, frozenset, bytes, bytearray, int)):
            raise TorchCheckpointError(f"bad argument to builtins.{kind.__name__}")
        return kind(*args)
    return make


def _numpy_dtype(obj, align=False, copy=False):
    if not isinstance(obj, str) or len(obj) > 16:
        raise TorchCheckpointError("numpy dtype must be named by a short string")
    try:
        dtype = np.dtype(obj)
    except TypeError as e:
        raise TorchCheckpointError(f"bad numpy dtype {obj!r}") from e
    return _plain_numpy_dtype(dtype)


def _numpy_scalar(dtype, data=None):
    dtype = _plain_numpy_dtype(dtype)
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise TorchCheckpointError("numpy scalar data does not match its dtype")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _numpy_reconstruct(cls, shape, typecode):
    if cls is not _NUMPY_NDARRAY:
        raise UnsafeCheckpointError("numpy _reconstruct of a class other than numpy.ndarray")
    return _NumpyArrayRecord()


_NUMPY_NDARRAY = _TensorType("numpy.ndarray", callable_=False)
