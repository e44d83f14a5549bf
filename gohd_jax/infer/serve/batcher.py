"""A request queue that hands the device batches of requests sharing one key.

``BatchQueue`` is what ``gohd serve`` puts in front of the engine: request threads ``submit(key,
item)`` and wait on the returned ``Ticket``; one consumer (the device thread) calls
``next_batch()``, which returns up to ``max_batch`` items of one key, FIFO:

- the key of the oldest waiting request goes first (no key starves another);
- a batch is handed out as soon as ``max_batch`` requests of that key are waiting, or when its
  oldest request has waited ``max_wait_s`` (the latency a request may spend waiting for company);
- ``submit`` refuses with ``Busy`` once ``max_pending`` requests are waiting (the queue never
  grows without bound: the client is told to try again).

Pure Python (no JAX), so its rules are tested on their own.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Hashable

__all__ = ["Busy", "Ticket", "BatchQueue"]


class Busy(RuntimeError):
    """The queue is full: try again later."""


@dataclasses.dataclass(eq=False)
class Ticket:
    """One submitted request: its key and item, when it arrived (``time.monotonic()`` seconds), and
    its outcome, set once by the consumer (``resolve`` / ``fail``), awaited with ``wait``."""
    key: Hashable
    item: object
    arrived: float
    _done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None

    def resolve(self, result) -> None:
        self.result = result
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once resolved or failed (False: still running after ``timeout`` seconds)."""
        return self._done.wait(timeout)


class BatchQueue:
    """Requests grouped by key into batches of at most ``max_batch``, each released when full or
    when its oldest request has waited ``max_wait_s`` (see the module docstring)."""

    def __init__(self, *, max_batch: int, max_wait_s: float, max_pending: int):
        if max_batch < 1 or max_wait_s < 0 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1, max_wait_s >= 0")
        self.max_batch, self.max_wait_s, self.max_pending = int(max_batch), float(max_wait_s), int(max_pending)
        self._waiting: collections.OrderedDict[Hashable, list[Ticket]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return sum(len(v) for v in self._waiting.values())

    def position(self, ticket: Ticket) -> int:
        """How many waiting requests arrived before ``ticket`` (0: next); -1 once it left the queue."""
        with self._cond:
            every = sorted((t for v in self._waiting.values() for t in v), key=lambda t: t.arrived)
            return next((i for i, t in enumerate(every) if t is ticket), -1)

    def submit(self, key: Hashable, item) -> Ticket:
        """Queues ``item`` under ``key``; raises ``Busy`` when ``max_pending`` are already waiting."""
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if sum(len(v) for v in self._waiting.values()) >= self.max_pending:
                raise Busy(f"{self.max_pending} requests are already waiting")
            ticket = Ticket(key, item, time.monotonic())
            self._waiting.setdefault(key, []).append(ticket)
            self._cond.notify_all()
            return ticket

    def next_batch(self, timeout: float | None = None) -> list[Ticket]:
        """Blocks until a batch is due and returns it (all of one key, oldest first); [] after
        ``timeout`` seconds with none due, or once the queue is closed and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._waiting:
                    key, tickets = next(iter(self._waiting.items()))  # the oldest request's key
                    due = tickets[0].arrived + self.max_wait_s
                    now = time.monotonic()
                    if len(tickets) >= self.max_batch or now >= due or self._closed:
                        batch, rest = tickets[:self.max_batch], tickets[self.max_batch:]
                        del self._waiting[key]
                        if rest:  # the rest keep their place by their oldest arrival
                            self._waiting[key] = rest
                            self._reorder()
                        return batch
                    wake = due if deadline is None else min(due, deadline)
                elif self._closed:
                    return []
                else:
                    wake = deadline
                if deadline is not None and time.monotonic() >= deadline:
                    return []
                self._cond.wait(None if wake is None else max(0.0, wake - time.monotonic()))

    def _reorder(self) -> None:
        order = sorted(self._waiting.items(), key=lambda kv: kv[1][0].arrived)
        self._waiting = collections.OrderedDict(order)

    def close(self) -> None:
        """No new requests; ``next_batch`` hands out what is left without waiting, then []."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
