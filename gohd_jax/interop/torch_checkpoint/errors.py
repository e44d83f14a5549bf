"""The exceptions the checkpoint reader raises (all are :class:`TorchCheckpointError`)."""

from __future__ import annotations


class TorchCheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated, or not in a format read here."""


class UnsafeCheckpointError(TorchCheckpointError):
    """The pickle asks for a global outside the tensor-rebuilding allow-list; nothing was run."""


class UnsupportedCheckpointError(TorchCheckpointError):
    """A well-formed torch file this reader does not handle (TorchScript, quantized tensors...)."""


class CheckpointKeyError(TorchCheckpointError, KeyError):
    """:func:`state_dict_from` could not find the key or prefix asked for."""

    __str__ = BaseException.__str__  # KeyError would wrap the message in quotes
