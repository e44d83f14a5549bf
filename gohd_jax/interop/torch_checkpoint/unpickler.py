"""The restricted unpickler: globals come only from the allow-list; errors name the source."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable

from .allowlist import _ALLOWED, _PY2_MODULES
from .errors import TorchCheckpointError, UnsafeCheckpointError


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose only way to reach Python objects is the allow-list (``_ALLOWED``)."""

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
