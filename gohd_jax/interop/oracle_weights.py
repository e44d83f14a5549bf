"""Rebuilds the exact state dicts of the reference oracles from their ``manifest.json``.

The rule (``reference/README.md``, "Weights"): for tensor k (its position in the manifest) with n
elements and weight seed s,

    x_i = splitmix64(s * 2**32 + k * 2**40 + i)          (uint64, wrapping), i = 0 .. n-1
    u_i = (x_i >> 11) * 2**-53                            (in [0, 1))
    value_i = mean + std * sqrt(3) * (2 u_i - 1)          (float64, then cast to the dtype)

a uniform distribution with the manifest's mean and std. Entries carrying ``values`` (architecture
constants: blur kernels, TISA slopes) are copied verbatim; integer entries (``num_batches_tracked``)
are the constant ``mean``. Every entry still takes its index k. The seed is the manifest's ``seed``
field (1 when absent). ``checksum`` is the sha256 the README's table lists.

numpy only; no torch. Vectorised in chunks: the 72.7M values of the diffusion manifests take a few
seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["ManifestError", "splitmix64", "load_manifest", "manifest_seed", "make_state_dict",
           "checksum", "DEFAULT_SEED"]

DEFAULT_SEED = 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 22  # elements per vectorised block (bounds temporary memory to ~100 MB)
_SQRT3 = math.sqrt(3.0)


class ManifestError(ValueError):
    """A manifest that is missing, not JSON, or not in the gohd-oracle-manifest format."""


def splitmix64(x):
    """SplitMix64 output function on uint64 (scalar int or array), wrapping arithmetic.

    ``splitmix64(0) == 0xe220a8397b1dcdaf``. Returns an int for an int input, else a uint64 array.
    """
    scalar = isinstance(x, (int, np.integer))
    z = np.asarray(x, dtype=np.uint64) if not scalar else np.array([int(x) % 2**64], np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        z = z ^ (z >> np.uint64(31))
    return int(z[0]) if scalar else z


def load_manifest(path) -> dict[str, Any]:
    """Reads and validates a ``manifest.json``; raises ManifestError with one clear line."""
    p = Path(os.fspath(path))
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{p}: no such manifest") from None
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read manifest ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), list):
        raise ManifestError(f"{p}: not an oracle manifest (expected an object with a "
                            f"'tensors' list)")
    for k, entry in enumerate(manifest["tensors"]):
        where = f"{p}: tensors[{k}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} is not an object")
        for field in ("name", "shape", "dtype"):
            if field not in entry:
                raise ManifestError(f"{where} lacks '{field}'")
        shape = entry["shape"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ManifestError(f"{where} ({entry['name']}): bad shape {shape!r}")
        try:
            np.dtype(entry["dtype"])
        except TypeError:
            raise ManifestError(f"{where} ({entry['name']}): unknown dtype "
                                f"{entry['dtype']!r}") from None
        if "values" in entry:
            if np.asarray(entry["values"]).size != math.prod(shape):
                raise ManifestError(f"{where} ({entry['name']}): {np.asarray(entry['values']).size}"
                                    f" values for shape {shape}")
        else:
            for field in ("mean", "std"):
                if not isinstance(entry.get(field), (int, float)):
                    raise ManifestError(f"{where} ({entry['name']}) lacks a numeric '{field}'")
    seed = manifest.get("seed", DEFAULT_SEED)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ManifestError(f"{p}: 'seed' must be a non-negative integer, got {seed!r}")
    return manifest


def manifest_seed(manifest: Mapping[str, Any]) -> int:
    """The weight seed of a manifest: its ``seed`` field, 1 when absent."""
    return int(manifest.get("seed", DEFAULT_SEED))


def _uniform(seed: int, k: int, n: int, mean: float, std: float, out: np.ndarray) -> None:
    """Fills flat ``out`` [n] with the rule's values for tensor k."""
    base = (seed * 2**32 + k * 2**40) % 2**64
    scale = std * _SQRT3
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        with np.errstate(over="ignore"):
            x = np.arange(lo, hi, dtype=np.uint64) + np.uint64(base)
        u = (splitmix64(x) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        out[lo:hi] = mean + scale * (2.0 * u - 1.0)


def make_state_dict(manifest: Mapping[str, Any], seed: int | None = None) -> dict[str, np.ndarray]:
    """The state dict a manifest describes, in manifest order, keyed by the torch names.

    Args:
      manifest: as returned by ``load_manifest``.
      seed: the weight seed; None means the manifest's own ``seed`` (1 when absent).

    Returns:
      ``{name: array}`` with the manifest's shapes and dtypes (float32, int64 ...).
    """
    if seed is None:
        seed = manifest_seed(manifest)
    state: dict[str, np.ndarray] = {}
    for k, entry in enumerate(manifest["tensors"]):
        shape = tuple(entry["shape"])
        dtype = np.dtype(entry["dtype"])
        n = math.prod(shape)
        if "values" in entry:
            arr = np.asarray(entry["values"], dtype=dtype).reshape(shape)
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            arr = np.full(shape, entry["mean"], dtype=dtype)
        else:
            flat = np.empty(n, dtype=np.float64)
            _uniform(seed, k, n, float(entry["mean"]), float(entry["std"]), flat)
            arr = flat.astype(dtype).reshape(shape)
        state[entry["name"]] = arr
    return state


def checksum(state_dict: Mapping[str, np.ndarray]) -> str:
    """sha256 hex over, in order, each name's UTF-8 bytes then its little-endian array bytes."""
    h = hashlib.sha256()
    for name, arr in state_dict.items():
        a = np.asarray(arr)
        h.update(name.encode("utf-8"))
        h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()
