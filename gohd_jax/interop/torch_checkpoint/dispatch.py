"""Telling the formats apart by their first bytes, and loading from in-memory bytes."""

from __future__ import annotations

import io
from typing import Any

from .errors import TorchCheckpointError, UnsupportedCheckpointError
from .legacy_format import _load_legacy, _looks_like_legacy
from .plain_pickle import _load_plain_pickle
from .zip_format import _load_zip


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
