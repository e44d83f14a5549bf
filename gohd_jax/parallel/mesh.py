"""The device mesh, axes ``("data", "fsdp")``, and batch placement.

Batches are split over both axes (every device holds a different slice of the
batch); parameters are replicated or split over ``fsdp`` (see ``rules``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``data`` x ``fsdp`` mesh over ``devices`` (default: all). One of the two
    sizes may be -1, meaning all remaining devices. Axes are Auto (GSPMD-style)."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    sizes = [data, fsdp]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one of data/fsdp may be -1, got data={data}, fsdp={fsdp}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if known < 1 or n % known:
            raise ValueError(f"mesh: {n} devices cannot be split with data={data}, fsdp={fsdp}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n or min(sizes) < 1:
        raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} = {math.prod(sizes)} devices, "
                         f"but {n} are available; use -1 for 'all remaining'")
    return jax.make_mesh(tuple(sizes), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) axis split over every device; other axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded over the batch axes.

    Every process passes its own ``per_host_batch`` rows; the global batch has
    ``per_host_batch * process_count`` rows.
    """
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in batch.items()}
