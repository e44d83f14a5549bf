"""Read PyTorch checkpoints (``.pt`` / ``.pth`` / ``.pkl``) without torch, and without running code.

``torch.save`` writes a pickle. A pickle may name any importable callable (``os.system``,
``builtins.eval``) and call it while it loads, so ``pickle.load`` on a downloaded checkpoint runs
whatever its author wanted. This reader uses a restricted unpickler instead: every ``GLOBAL`` the
pickle asks for is looked up in a small table of stand-ins written here (tensor rebuilders,
storage types, dtypes, ``OrderedDict``, ``torch.Size``, ``argparse.Namespace`` as a plain record,
numpy scalars and arrays of non-object dtype). Nothing is imported from the file's names, no
real torch or user function is ever called, and any other global raises
:class:`UnsafeCheckpointError` before anything runs. The stand-ins cannot be mutated by the
pickle (``BUILD`` on them fails), tensor views are bounds-checked against their storage before
numpy touches memory, and a storage's bytes are read only from the archive record it names.

Formats read:

* **zip** (``torch.save`` since 1.6, the default; also ``.pkl`` files saved that way): a zip
  holding ``<prefix>/data.pkl`` (protocol-2 pickle whose storages are persistent ids
  ``('storage', StorageType, key, location, numel)``), ``<prefix>/data/<key>`` (raw
  little-endian storage bytes), ``<prefix>/byteorder`` and ``<prefix>/version``;
* **legacy** (``_use_new_zipfile_serialization=False``, torch 0.4 to 1.5): the pickles
  ``MAGIC_NUMBER``, ``PROTOCOL_VERSION``, ``sys_info``, then the object (persistent ids
  ``('storage', StorageType, root_key, location, numel, view_metadata)``), then the sorted list
  of storage keys, then for each key an int64 element count and the raw bytes;
* a **plain pickle** of data (``pickle.dump`` of dicts of numpy arrays, or of torch tensors,
  whose storages are nested ``torch.save`` archives rebuilt by ``torch.storage._load_from_bytes``).

Not read (clear :class:`UnsupportedCheckpointError`): TorchScript archives (``torch.jit.save``),
the pre-0.4 tar format, quantized / sparse / meta / subclass tensors. For those alone, when torch
happens to be importable, :func:`load_torch_checkpoint` falls back to
``torch.load(weights_only=True)``; a file refused as unsafe is never handed to torch.

Result: the pickled object with containers as plain Python (``OrderedDict`` -> ``dict``,
``argparse.Namespace`` -> ``dict``, lists, tuples) and every tensor as a contiguous, writable
numpy array of its dtype and shape (``bfloat16`` / ``float8_*`` as ``ml_dtypes`` dtypes). Tensors
that shared one storage come back as separate arrays holding the right (possibly overlapping)
values. ``requires_grad``, hooks and tensor attributes are dropped. Device tags (``cuda:0``) are
ignored: everything lands on the host.

Typical use::

    ckpt = load_torch_checkpoint("audio2exp.pth")
    sd = state_dict_from(ckpt, key="state_dict_G")        # 'module.' stripped when all keys have it
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "TorchCheckpointError",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "CheckpointKeyError",
    "load_torch_checkpoint",
    "load_torch_checkpoint_bytes",
    "state_dict_from",
]

# torch/serialization.py: the legacy format's first pickle, and its protocol version.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_MAX_NESTING = 2  # torch.storage._load_from_bytes nests archives one level; allow no deeper


class TorchCheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated, or not in a format read here."""


class UnsafeCheckpointError(TorchCheckpointError):
    """The pickle asks for a global outside the tensor-rebuilding allow-list; nothing was run."""


class UnsupportedCheckpointError(TorchCheckpointError):
    """A well-formed torch file this reader does not handle (TorchScript, quantized tensors...)."""


class CheckpointKeyError(TorchCheckpointError, KeyError):
    """:func:`state_dict_from` could not find the key or prefix asked for."""

    __str__ = BaseException.__str__  # KeyError would wrap the message in quotes


# ---------------------------------------------------------------------------------------------
# Stand-ins for the allowed globals. Instances and classes are frozen: a pickle's BUILD opcode
# (setstate / setattr) on them fails, so a file cannot alter them for later loads.


class _FrozenMeta(type):
    def __setattr__(cls, name, value):
        raise UnsafeCheckpointError(f"the pickle tried to set attribute {name!r} on {cls.__name__}")

    def __delattr__(cls, name):
        raise UnsafeCheckpointError(f"the pickle tried to delete attribute {name!r} of {cls.__name__}")


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(
            f"the pickle tried to set attribute {name!r} on {type(self).__name__}")

    def __delattr__(self, name):
        raise UnsafeCheckpointError(
            f"the pickle tried to delete attribute {name!r} of {type(self).__name__}")

    def __reduce_ex__(self, protocol):
        raise TypeError(f"{type(self).__name__} is a checkpoint-reader stand-in; not picklable")


class _SafeFunction(_Frozen):
    """An allowed global that the pickle may call (REDUCE); calls our own implementation."""

    __slots__ = ("_fn", "qualname")

    def __init__(self, qualname: str, fn: Callable):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args):
        return self._fn(*args)

    def __repr__(self):
        return f"<allowed global {self.qualname}>"


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

    __slots__ = ()

    def __new__(cls, data=None, requires_grad=True, *args, **kwargs):
        _require_tensor(data, "torch.nn.parameter.Parameter")
        return data


class _NamespaceRecord(metaclass=_FrozenMeta):
    """``argparse.Namespace`` (LIA saves its ``args``): kept as a plain record, becomes a dict."""

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


class _Storage(_Frozen):
    """One storage reference: ``numel`` elements of ``dtype`` starting ``byte_offset`` bytes into
    a root blob that ``loader`` returns (uint8 array) once the bytes are available."""

    __slots__ = ("key", "dtype", "numel", "byte_offset", "loader", "big_endian")

    def __init__(self, key, dtype, numel, byte_offset, loader, big_endian):
        for k, v in dict(key=key, dtype=np.dtype(dtype), numel=numel, byte_offset=byte_offset,
                         loader=loader, big_endian=big_endian).items():
            object.__setattr__(self, k, v)

    def typed(self, dtype=None) -> np.ndarray:
        """The storage's elements as a 1-D read-only array of ``dtype`` (default: its own)."""
        raw = self.loader()
        nbytes = self.numel * self.dtype.itemsize
        end = self.byte_offset + nbytes
        if raw.size < end:
            raise TorchCheckpointError(
                f"storage {self.key!r} holds {raw.size} bytes but {end} are needed "
                "(truncated or corrupt file)")
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        chunk = raw[self.byte_offset:end]
        usable = (chunk.size // dtype.itemsize) * dtype.itemsize
        chunk = chunk[:usable]
        if self.big_endian and dtype.itemsize > 1:
            unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            return chunk.view(f"<u{unit}").byteswap().view(dtype)
        return chunk.view(dtype)

    def elements_as(self, dtype) -> int:
        return (self.numel * self.dtype.itemsize) // np.dtype(dtype).itemsize


class _PendingTensor(_Frozen):
    """A tensor view waiting for its storage bytes (legacy files store them after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage: _Storage, offset, size, stride, dtype):
        for k, v in dict(storage=storage, offset=offset, size=size, stride=stride,
                         dtype=np.dtype(dtype)).items():
            object.__setattr__(self, k, v)

    def __setstate__(self, state):
        # Old torch versions BUILD tensors with (requires_grad, hooks) or attribute dicts: ignored.
        return None

    def materialize(self) -> np.ndarray:
        flat = self.storage.typed(self.dtype)
        n = math.prod(self.size)
        if n == 0:
            return np.zeros(self.size, self.dtype)
        base = flat[self.offset:]
        itemsize = self.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base, shape=self.size, strides=tuple(s * itemsize for s in self.stride),
            writeable=False)
        if n > flat.size:  # an expanded (stride-0) view larger than its storage: keep the view
            return view
        return np.array(view, order="C")


def _require_tensor(x, where: str):
    if not isinstance(x, (_PendingTensor, _LegacyTensor)):
        raise TorchCheckpointError(f"{where} expects a tensor, got {type(x).__name__}")


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in x):
        raise TorchCheckpointError(f"{what} must be a tuple of ints, got {x!r:.80}")
    return tuple(x)


def _plain_numpy_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise TorchCheckpointError(f"expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.hasobject:
        raise UnsafeCheckpointError("numpy data of object dtype (may hold arbitrary objects)")
    return dtype


# ---------------------------------------------------------------------------------------------
# The tensor rebuilders (torch/_utils.py signatures).


def _make_tensor(storage, storage_offset, size, stride, dtype=None) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(
            f"tensor rebuild expects a storage, got {type(storage).__name__}")
    size = _int_tuple(size, "tensor size")
    stride = _int_tuple(stride, "tensor stride")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise TorchCheckpointError(f"bad storage offset {storage_offset!r}")
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchCheckpointError(f"bad tensor geometry: size {size}, stride {stride}")
    if dtype is None:
        dtype = storage.dtype
        available = storage.numel
    else:
        available = storage.elements_as(dtype)
    if math.prod(size) > 0:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= available:
            raise TorchCheckpointError(
                f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches element "
                f"{last} of a storage holding {available} (corrupt file)")
    return _PendingTensor(storage, storage_offset, size, stride, dtype)


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


def _build_tables():
    g: dict[tuple[str, str], Any] = {}

    def fn(module, name, impl):
        g[(module, name)] = _SafeFunction(f"{module}.{name}", impl)

    for name, impl in [("_rebuild_tensor", _rebuild_tensor),
                       ("_rebuild_tensor_v2", _rebuild_tensor_v2),
                       ("_rebuild_tensor_v3", _rebuild_tensor_v3),
                       ("_rebuild_parameter", _rebuild_parameter),
                       ("_rebuild_parameter_with_state", _rebuild_parameter_with_state),
                       ("_rebuild_qtensor", _unsupported("quantized tensors")),
                       ("_rebuild_sparse_tensor", _unsupported("sparse tensors")),
                       ("_rebuild_sparse_csr", _unsupported("sparse tensors")),
                       ("_rebuild_nested_tensor", _unsupported("nested tensors")),
                       ("_rebuild_meta_tensor_no_storage", _unsupported("meta tensors")),
                       ("_rebuild_wrapper_subclass", _unsupported("tensor subclasses")),
                       ("_rebuild_device_tensor_from_numpy", _unsupported("numpy-backed device tensors")),
                       ("_rebuild_device_tensor_from_cpu_tensor", _unsupported("device tensors")),
                       ("_rebuild_xla_tensor", _unsupported("XLA tensors")),
                       ("_rebuild_mps_tensor", _unsupported("MPS tensors"))]:
        fn("torch._utils", name, impl)
    fn("torch._tensor", "_rebuild_from_type_v2", _rebuild_from_type_v2)
    fn("torch._tensor", "_rebuild_from_type", lambda func, type_, args, dict_:
       _rebuild_from_type_v2(func, type_, args, None))
    fn("collections", "OrderedDict", _ordered_dict)
    fn("torch", "Size", _torch_size)
    fn("torch", "device", _torch_device)
    fn("torch.serialization", "_get_layout", _get_layout)
    fn("_codecs", "encode", _codecs_encode)
    for kind in (set, frozenset, bytearray, complex):
        fn("builtins", kind.__name__, _builtin(kind))
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        fn(mod, "scalar", _numpy_scalar)
        fn(mod, "_reconstruct", _numpy_reconstruct)
    fn("numpy", "dtype", _numpy_dtype)
    g[("numpy", "ndarray")] = _NUMPY_NDARRAY
    g[("argparse", "Namespace")] = _NamespaceRecord
    g[("torch.nn.parameter", "Parameter")] = _ParameterClass
    g[("torch", "Tensor")] = _TensorType("torch.Tensor")
    g[("torch._tensor", "Tensor")] = g[("torch", "Tensor")]
    for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte",
                 "Bool"):
        for mod in ("torch", "torch.cuda"):
            g[(mod, f"{kind}Tensor")] = _TensorType(f"{mod}.{kind}Tensor")

    storages = {
        "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
        "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
        "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
        "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
    }
    for name, dtype in storages.items():
        for mod in ("torch", "torch.cuda"):
            g[(mod, name)] = _StorageType(name, dtype)
    g[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage", np.uint8)
    g[("torch", "TypedStorage")] = _StorageType("TypedStorage", np.uint8)

    dtypes = {
        "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
        "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
        "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
        "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8,
        "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
        "complex64": np.complex64, "cfloat": np.complex64, "complex128": np.complex128,
        "cdouble": np.complex128, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
        "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
        "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    }
    for name, dtype in dtypes.items():
        g[("torch", name)] = _TorchDtype(name, dtype)
    return g


_ALLOWED = _build_tables()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose only way to reach Python objects is the allow-list above."""

    def __init__(self, file, source: str, persistent_load: Callable | None):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(
                f"{self._source}: refused global '{module}.{name}': only tensor-rebuilding "
                "globals are allowed (the file may be malicious, or pickle a whole Python object "
                "instead of a state dict); nothing was run")
        return found

    def persistent_load(self, pid):
        if self._persistent is None:
            raise TorchCheckpointError(f"{self._source}: unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def _unpickle(data: bytes | io.BufferedIOBase, source: str, persistent_load=None,
              unpickler: type[_RestrictedUnpickler] = _RestrictedUnpickler):
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return unpickler(f, source, persistent_load).load()
    except TorchCheckpointError as e:
        msg = str(e)
        if not msg.startswith(source):
            msg = f"{source}: {msg}"
        raise type(e)(msg) from None
    except RecursionError:
        raise TorchCheckpointError(f"{source}: pickle nested too deeply") from None
    except Exception as e:  # noqa: BLE001 -- UnpicklingError, EOFError, TypeError... of malformed opcodes
        raise TorchCheckpointError(
            f"{source}: corrupt or truncated pickle data ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# Turning the unpickled tree into plain Python + numpy.


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


# ---------------------------------------------------------------------------------------------
# The formats.


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


def _load_zip(f, source: str, depth: int):
    try:
        zf = zipfile.ZipFile(f)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise TorchCheckpointError(f"{source}: not a readable zip archive (truncated or corrupt: {e})") from None
    with zf:
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise UnsupportedCheckpointError(
                f"{source}: a TorchScript archive (torch.jit.save); only torch.save files are read")
        if len(pkls) != 1:
            raise TorchCheckpointError(
                f"{source}: zip archive without exactly one '<prefix>/data.pkl' (found {len(pkls)}); "
                "not a torch.save file")
        prefix = pkls[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            order = _read_member(zf, prefix + "byteorder", source)
            if order not in (b"little", b"big"):
                raise TorchCheckpointError(f"{source}: unknown byteorder record {order[:20]!r}")
            big_endian = order == b"big"
        raw_cache: dict[str, np.ndarray] = {}

        def blob(key: str) -> np.ndarray:
            if key not in raw_cache:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise TorchCheckpointError(f"{source}: storage record '{name}' is missing")
                raw_cache[key] = np.frombuffer(_read_member(zf, name, source), np.uint8)
            return raw_cache[key]

        cache: dict = {}
        obj = _unpickle(_read_member(zf, pkls[0], source), source,
                        lambda pid: _storage_from_pid(pid, source, blob, big_endian, cache, legacy=False))
        return _finish(obj, source, depth)


def _read_member(zf: zipfile.ZipFile, name: str, source: str) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise TorchCheckpointError(f"{source}: cannot read '{name}' from the zip (truncated or corrupt: {e})") from None


def _load_legacy(f: io.BufferedIOBase, source: str, depth: int):
    magic = _unpickle(f, source)
    if magic != MAGIC_NUMBER:
        raise TorchCheckpointError(f"{source}: bad magic number; corrupt file?")
    version = _unpickle(f, source)
    if version != PROTOCOL_VERSION:
        raise UnsupportedCheckpointError(f"{source}: legacy protocol version {version!r} is not supported")
    sys_info = _unpickle(f, source)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise UnsupportedCheckpointError(f"{source}: written on a big-endian machine (legacy format)")
    blobs: dict[str, np.ndarray] = {}
    declared: dict[str, _Storage] = {}

    def blob(key: str) -> np.ndarray:
        if key not in blobs:
            raise TorchCheckpointError(f"{source}: storage {key!r} has no data in the file")
        return blobs[key]

    cache: dict = {}

    def pl(pid):
        st = _storage_from_pid(pid, source, blob, False, cache, legacy=True)
        root = _decode(pid[2])
        if root not in declared or declared[root].numel < pid[4]:
            declared[root] = _Storage(root, pid[1].dtype, pid[4], 0, None, False)
        return st

    obj = _unpickle(f, source, pl)
    keys = _unpickle(f, source)
    if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise TorchCheckpointError(f"{source}: bad storage key list")
    data_start = f.tell()
    remaining = f.seek(0, os.SEEK_END) - data_start
    f.seek(data_start)
    for key in map(_decode, keys):
        if key not in declared:
            raise TorchCheckpointError(f"{source}: data for undeclared storage {key!r}")
        head = f.read(8)
        if len(head) != 8:
            raise TorchCheckpointError(f"{source}: truncated before the data of storage {key!r}")
        (count,) = struct.unpack("<q", head)
        itemsize = declared[key].dtype.itemsize
        if count < declared[key].numel:
            raise TorchCheckpointError(
                f"{source}: storage {key!r} has {count} elements, {declared[key].numel} declared")
        remaining -= 8
        if count * itemsize > remaining:
            raise TorchCheckpointError(f"{source}: truncated in the data of storage {key!r}")
        remaining -= count * itemsize
        data = f.read(count * itemsize)
        if len(data) != count * itemsize:
            raise TorchCheckpointError(f"{source}: truncated in the data of storage {key!r}")
        blobs[key] = np.frombuffer(data, np.uint8)
    return _finish(obj, source, depth)


def _load_plain_pickle(f, source: str, depth: int):
    nested_cache: dict = {}

    def load_from_bytes(data):
        # torch.storage._load_from_bytes(b): the storage was itself torch.save'd into b.
        if not isinstance(data, (bytes, bytearray)):
            raise TorchCheckpointError(f"{source}: _load_from_bytes expects bytes")
        if depth + 1 > _MAX_NESTING:
            raise TorchCheckpointError(f"{source}: torch archives nested too deeply")
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


def _looks_like_legacy(head: bytes) -> bool:
    # pickle.dump(MAGIC_NUMBER, f, protocol=p), p >= 2: PROTO p, [FRAME n (p >= 4)], LONG1 of
    # 10 bytes holding the magic, STOP.
    if head[:1] != b"\x80":
        return False
    i = 2
    if head[i:i + 1] == b"\x95":  # FRAME + 8-byte length
        i += 9
    return head[i:i + 2] == b"\x8a\x0a" and int.from_bytes(head[i + 2:i + 12], "little") == MAGIC_NUMBER


def _load_any(f: io.BufferedIOBase, source: str, depth: int = 0):
    head = f.read(512)
    f.seek(0)
    if head[:4] == b"PK\x03\x04":
        return _load_zip(f, source, depth)
    if _looks_like_legacy(head):
        return _load_legacy(f, source, depth)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise UnsupportedCheckpointError(f"{source}: the pre-0.4 tar checkpoint format is not supported")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c"):
        return _load_plain_pickle(f, source, depth)
    if not head:
        raise TorchCheckpointError(f"{source}: the file is empty")
    raise TorchCheckpointError(f"{source}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")


def load_torch_checkpoint_bytes(data: bytes, *, source: str = "<bytes>") -> Any:
    """:func:`load_torch_checkpoint` on in-memory bytes (no torch fallback)."""
    return _load_any(io.BytesIO(data), source)


def load_torch_checkpoint(path: str | os.PathLike, *, allow_torch_fallback: bool = True) -> Any:
    """Load a ``torch.save`` file (zip or legacy format, or a plain data pickle) without torch.

    Args:
      path: the checkpoint file.
      allow_torch_fallback: when the file is well formed but in a format this reader does not
        handle (:class:`UnsupportedCheckpointError`: TorchScript, quantized tensors, ...) and
        ``torch`` is importable, use ``torch.load(path, map_location="cpu", weights_only=True)``
        and convert its tensors to numpy. Files refused as unsafe or found corrupt never reach torch.

    Returns:
      The saved object: dicts (``OrderedDict`` and ``argparse.Namespace`` become ``dict``),
      lists, tuples, Python scalars, and tensors as numpy arrays with the saved dtype and shape.

    Raises:
      UnsafeCheckpointError: the pickle names a global outside the allow-list (nothing ran).
      UnsupportedCheckpointError: a valid torch file of a kind not read here (and no fallback).
      TorchCheckpointError: missing, empty, truncated or corrupt file.
    """
    p = Path(path)
    source = str(path)
    if not p.is_file():
        raise TorchCheckpointError(f"{source}: no such checkpoint file")
    try:
        with open(p, "rb") as f:
            return _load_any(f, source)
    except UnsupportedCheckpointError as e:
        if not allow_torch_fallback:
            raise
        fallback = _torch_fallback(p)
        if fallback is _NO_TORCH:
            raise UnsupportedCheckpointError(f"{e} (and torch is not installed for a fallback)") from None
        return fallback


_NO_TORCH = object()


def _torch_fallback(path: Path):
    try:
        import torch  # optional; never a dependency of this project
    except ImportError:
        return _NO_TORCH
    try:  # weights_only=True: torch's own restricted unpickler (torch >= 1.13), never the unsafe one
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- whatever torch raises, report it in one line
        raise UnsupportedCheckpointError(
            f"{path}: torch.load(weights_only=True) failed too "
            f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None

    def conv(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
            return x.numpy().copy()
        if isinstance(x, Mapping):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, list):
            return [conv(v) for v in x]
        if isinstance(x, tuple):
            return tuple(conv(v) for v in x)
        return x

    return conv(obj)


# ---------------------------------------------------------------------------------------------
# Picking the state dict out of a checkpoint.


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
