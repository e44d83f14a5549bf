"""The zip format (``torch.save`` since 1.6): ``<prefix>/data.pkl`` plus ``<prefix>/data/<key>`` records."""

from __future__ import annotations

import zipfile

import numpy as np

from .errors import TorchCheckpointError, UnsupportedCheckpointError
from .finalize import _finish
from .persistent_ids import _storage_from_pid
from .unpickler import _unpickle


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
