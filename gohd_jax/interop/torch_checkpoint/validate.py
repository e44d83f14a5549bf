"""Type checks on values a pickle hands to the stand-ins (int tuples, plain numpy dtypes)."""

from __future__ import annotations

import numpy as np

from .errors import TorchCheckpointError, UnsafeCheckpointError


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
