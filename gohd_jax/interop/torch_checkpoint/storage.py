"""Storage references and tensor views on them; every view is bounds-checked against its storage
before numpy touches memory, and a storage's bytes come only from the record it names."""

from __future__ import annotations

import math

import numpy as np

from .errors import TorchCheckpointError
from .frozen import _Frozen
from .validate import _int_tuple


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
