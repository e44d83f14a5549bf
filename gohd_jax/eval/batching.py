"""Fixed-size device batches gathered across clips, for the metric networks of ``gohd-eval``.

A ``DeviceBatcher`` wraps a pure function ``apply(params, x) -> y`` (params: a pytree of arrays,
x: a batch [B, ...], y: a pytree of arrays [B, ...]). Clips hand it their items
(``add(key, items, on_done)``); it runs ``apply`` whenever ``batch_size`` items are waiting,
whatever clips they come from, and calls ``on_done(outputs)`` once all of a clip's items have run
(``outputs``: ``y`` of that clip's items in order, as numpy). The last, partial batch is padded
with copies of its last item, so ``apply`` compiles once per item shape. The batch is sharded
over the local devices (a 1-D mesh ``("data",)``; the batch size is rounded up to a multiple of
their count) and the parameters are replicated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["DeviceBatcher"]


class DeviceBatcher:
    def __init__(self, apply: Callable[[Any, jax.Array], Any], params: Any, batch_size: int, *,
                 devices=None, name: str = ""):
        devices = list(devices or jax.local_devices())
        n = len(devices)
        self.batch_size = -(-max(1, int(batch_size)) // n) * n
        mesh = Mesh(np.array(devices), ("data",))
        self._batch_sharding = NamedSharding(mesh, P("data"))
        replicated = NamedSharding(mesh, P())
        self.params = jax.device_put(params, replicated)
        self._fn = jax.jit(apply, in_shardings=(replicated, self._batch_sharding))
        self.name = name
        self._queue: list[tuple[Any, np.ndarray]] = []  # (key, one item)
        self._queued = 0
        self._open: dict[Any, dict] = {}  # key -> {"left": n, "outs": [...], "on_done": fn}
        self.items_run = 0  # real (unpadded) items
        self.seconds = 0.0

    def add(self, key: Any, items: np.ndarray, on_done: Callable[[Any], None]) -> None:
        """Queues ``items`` [n, ...] of clip ``key`` (a key not already open); runs full batches."""
        if key in self._open:
            raise ValueError(f"{self.name}: items of {key!r} are already queued")
        n = len(items)
        if n == 0:
            on_done(None)
            return
        self._open[key] = {"left": n, "outs": [], "on_done": on_done}
        for i in range(n):
            self._queue.append((key, items[i]))
            if len(self._queue) == self.batch_size:
                self._run()

    def flush(self) -> None:
        """Runs what is queued (padded to a full batch)."""
        if self._queue:
            self._run()

    def _run(self) -> None:
        keys = [k for k, _ in self._queue]
        batch = np.stack([x for _, x in self._queue])
        real = len(batch)
        if real < self.batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - real, axis=0)])
        self._queue = []
        t = time.perf_counter()
        out = jax.device_get(self._fn(self.params, jax.device_put(batch, self._batch_sharding)))
        self.seconds += time.perf_counter() - t
        self.items_run += real
        start = 0
        while start < real:  # consecutive runs of one key
            key = keys[start]
            stop = start
            while stop < real and keys[stop] == key:
                stop += 1
            entry = self._open[key]
            entry["outs"].append(jax.tree_util.tree_map(lambda y, a=start, b=stop: np.asarray(y[a:b]), out))
            entry["left"] -= stop - start
            if entry["left"] == 0:
                del self._open[key]
                outs = entry["outs"]
                entry["on_done"](jax.tree_util.tree_map(lambda *ys: np.concatenate(ys), *outs))
            start = stop
