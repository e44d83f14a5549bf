"""The legacy format (torch 0.4 to 1.5): header pickles, the object, its storage keys, then raw bytes."""

from __future__ import annotations

import io
import os
import struct

import numpy as np

from .errors import TorchCheckpointError, UnsupportedCheckpointError
from .finalize import _finish
from .persistent_ids import _decode, _storage_from_pid
from .storage import _Storage
from .unpickler import _unpickle

# torch/serialization.py: the legacy format's first pickle, and its protocol version.
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def _looks_like_legacy(head: bytes) -> bool:
    # pickle.dump(MAGIC_NUMBER, f, protocol=p), p >= 2: PROTO p, [FRAME n (p >= 4)], LONG1 of
    # 10 bytes holding the magic, STOP.
    if head[:1] != b"\x80":
        return False
    i = 2
    if head[i:i + 1] == b"\x95":  # FRAME + 8-byte length
        i += 9
    return head[i:i + 2] == b"\x8a\x0a" and int.from_bytes(head[i + 2:i + 12], "little") == MAGIC_NUMBER


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
