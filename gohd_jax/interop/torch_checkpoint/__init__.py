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

Layout: ``errors`` (the exceptions); ``frozen``, ``validate``, ``storage`` (bounds-checked tensor
views), ``standins`` and ``rebuild`` (what the allowed globals stand for); ``allowlist`` (the
table); ``unpickler`` (the restricted unpickler); ``finalize`` (to plain Python + numpy);
``persistent_ids``, ``zip_format``, ``legacy_format``, ``plain_pickle`` (the formats);
``dispatch`` (format sniffing, :func:`load_torch_checkpoint_bytes`); ``state_dict``
(:func:`state_dict_from`); this ``__init__`` (:func:`load_torch_checkpoint`, torch fallback).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes

from .dispatch import _load_any, load_torch_checkpoint_bytes
from .errors import CheckpointKeyError, TorchCheckpointError, UnsafeCheckpointError, UnsupportedCheckpointError
from .legacy_format import MAGIC_NUMBER as MAGIC_NUMBER
from .legacy_format import PROTOCOL_VERSION as PROTOCOL_VERSION
from .standins import _NamespaceRecord as _NamespaceRecord  # their __module__ is this package
from .standins import _ParameterClass as _ParameterClass
from .state_dict import state_dict_from

__all__ = [
    "TorchCheckpointError",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "CheckpointKeyError",
    "load_torch_checkpoint",
    "load_torch_checkpoint_bytes",
    "state_dict_from",
]

# The path loader and its optional torch fallback live here, in the package itself: the one
# ``import torch`` of the reader stays inside _torch_fallback, in this file.


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
