"""Stand-ins for the allowed torch / argparse / numpy globals: dtype and storage names, tensor
types, legacy tensors, ``Parameter``, ``argparse.Namespace`` and numpy arrays, all frozen."""

from __future__ import annotations

import math

import numpy as np

from .errors import TorchCheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError
from .frozen import _Frozen, _FrozenMeta
from .storage import _make_tensor, _PendingTensor
from .validate import _int_tuple, _plain_numpy_dtype

_PACKAGE = __name__.rpartition(".")[0]  # gohd_jax.interop.torch_checkpoint


class _NamedDtype(_Frozen):
    """A torch name standing for a numpy dtype (base of the two kinds below)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(dtype))

    def __repr__(self):
        return f"<torch.{self.name}>"


class _StorageType(_NamedDtype):
    """``torch.FloatStorage`` & co: only names a dtype (the persistent id carries the data)."""

    __slots__ = ()


class _TorchDtype(_NamedDtype):
    """``torch.float32`` & co, as the numpy dtype they map to."""

    __slots__ = ()


class _TensorType(_Frozen):
    """``torch.Tensor``, ``torch.FloatTensor`` & co: the ``new_type`` of a rebuild, or (old torch
    versions) called with no arguments to make an empty tensor that BUILD then fills."""

    __slots__ = ("qualname", "callable")

    def __init__(self, qualname: str, callable_: bool = True):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "callable", callable_)

    def __call__(self, *args):
        if not self.callable or args:
            raise UnsupportedCheckpointError(f"constructing {self.qualname} from arguments is not supported")
        return _LegacyTensor()

    def __repr__(self):
        return f"<{self.qualname}>"


class _LegacyTensor(_Frozen):
    """``torch.FloatTensor()`` + BUILD, as torch < 0.4 pickled tensors (``Tensor.__setstate__``):
    state ``(storage, offset, size, stride)``, or ``(data, ...)`` for a 5-tuple (Variable)."""

    __slots__ = ("pending",)

    def __init__(self):
        object.__setattr__(self, "pending", None)

    def __setstate__(self, state):
        if not isinstance(state, tuple):
            raise TorchCheckpointError("unexpected tensor state in the pickle")
        if len(state) == 4:
            storage, offset, size, stride = state
            object.__setattr__(self, "pending", _make_tensor(storage, offset, tuple(size), tuple(stride)))
        elif len(state) == 5:
            _require_tensor(state[0], "a legacy Variable")
            data = state[0]
            object.__setattr__(self, "pending", data.pending if isinstance(data, _LegacyTensor) else data)
        elif len(state) != 3:  # (requires_grad, _, backward_hooks): nothing to keep
            raise TorchCheckpointError("unexpected tensor state in the pickle")

    def materialize(self) -> np.ndarray:
        if self.pending is None:
            return np.zeros((0,), np.float32)
        return self.pending.materialize()


class _ParameterClass(metaclass=_FrozenMeta):
    """``torch.nn.parameter.Parameter`` when a pickle builds it with NEWOBJ: returns the data."""

    __module__ = _PACKAGE  # its repr can end up in the loaded data: as before the split
    __slots__ = ()

    def __new__(cls, data=None, requires_grad=True, *args, **kwargs):
        _require_tensor(data, "torch.nn.parameter.Parameter")
        return data


class _NamespaceRecord(metaclass=_FrozenMeta):
    """``argparse.Namespace`` (LIA saves its ``args``): kept as a plain record, becomes a dict."""

    __module__ = _PACKAGE  # its repr can end up in the loaded data: as before the split
    __slots__ = ("items",)

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "items", dict(kwargs))
        return self

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise TorchCheckpointError("argparse.Namespace state is not a dict")
        self.items.update(state)

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError("the pickle tried to set an attribute on argparse.Namespace")


class _NumpyArrayRecord(_Frozen):
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` then BUILD: rebuilt from raw bytes."""

    __slots__ = ("array",)

    def __init__(self):
        object.__setattr__(self, "array", None)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise TorchCheckpointError("unexpected numpy array state in the pickle")
        _version, shape, dtype, is_fortran, raw = state
        dtype = _plain_numpy_dtype(dtype)
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafeCheckpointError("numpy array whose data is not raw bytes (object array)")
        shape = _int_tuple(shape, "numpy array shape")
        n = math.prod(shape)
        if len(raw) != n * dtype.itemsize:
            raise TorchCheckpointError("numpy array data does not match its shape")
        arr = np.frombuffer(bytes(raw), dtype=dtype, count=n).reshape(
            shape, order="F" if is_fortran else "C")
        object.__setattr__(self, "array", np.array(arr, order="C"))


def _require_tensor(x, where: str):
    if not isinstance(x, (_PendingTensor, _LegacyTensor)):
        raise TorchCheckpointError(f"{where} expects a tensor, got {type(x).__name__}")
