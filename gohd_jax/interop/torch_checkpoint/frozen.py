"""Frozen bases for the stand-ins: a pickle's BUILD opcode (setstate / setattr) on them fails,
so a file cannot alter them for later loads; :class:`_SafeFunction` wraps an allowed callable."""

from __future__ import annotations

from collections.abc import Callable

from .errors import UnsafeCheckpointError


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
