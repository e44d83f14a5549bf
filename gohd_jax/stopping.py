"""Stopping a long command cleanly on SIGTERM or Ctrl-C (SIGINT).

``StopOnSignal`` turns either signal into a ``Stopped`` exception in the main thread, so that the
command unwinds through its ``finally`` blocks (checkpointers closed, worker pools terminated) and
exits with one line instead of a traceback. Python runs a signal handler only between bytecodes,
so a main thread inside a long native call (an XLA compile can take half a minute) would not
notice for that long: a watchdog thread, woken by the signal through ``signal.set_wakeup_fd``
the instant it arrives, gives the main thread ``grace_s`` to unwind and otherwise prints the
same line and ends the process itself (``os._exit``). Checkpoints already committed stay valid:
Orbax and the dataset writers only publish complete files.

A training loop inside the block may install its own SIGTERM handler (``Trainer`` does: it
saves a preemption checkpoint at the end of the step and returns ``status="preempted"``); the
caller then raises ``Stopped`` from that status.

    with StopOnSignal(on_stop=lambda s: print(f"stopped by {s.signal_name}")) as stop:
        ...  # raises Stopped on SIGTERM / SIGINT
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Raised in the main thread when the command was told to stop."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + self.signum


class StopOnSignal:
    """Context manager: SIGTERM / SIGINT raise ``Stopped`` in the main thread (see the module doc).

    Args:
      on_stop: called once with the ``Stopped`` when the process ends through the watchdog (the
        main thread did not unwind within ``grace_s``); it should print where the partial work
        is. The caller prints the same for a ``Stopped`` it catches.
      grace_s: seconds the main thread gets to unwind before the watchdog ends the process.
    """

    def __init__(self, on_stop: Callable[[Stopped], None], grace_s: float = 8.0):
        self.on_stop = on_stop
        self.grace_s = grace_s
        self._finished = threading.Event()
        self._old: dict[int, object] = {}
        self._old_wakeup = -1
        self._socks: tuple[socket.socket, socket.socket] | None = None

    # -- main thread --------------------------------------------------------------------------
    def _handler(self, signum, frame):
        raise Stopped(signum)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopOnSignal must be entered in the main thread")
        reader, writer = socket.socketpair()
        reader.setblocking(True)
        writer.setblocking(False)
        self._socks = (reader, writer)
        for s in SIGNALS:
            self._old[s] = signal.signal(s, self._handler)
        self._old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="stop-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._finished.set()
        signal.set_wakeup_fd(self._old_wakeup)
        for s, old in self._old.items():
            signal.signal(s, old)
        if self._socks is not None:
            self._socks[1].close()  # wakes the watchdog with EOF: it returns
        return None

    # -- watchdog thread ----------------------------------------------------------------------
    def _watch(self) -> None:
        reader = self._socks[0]
        try:
            data = reader.recv(1)
        except OSError:
            return
        if not data or self._finished.is_set():
            reader.close()
            return
        signum = data[0]
        if self._finished.wait(self.grace_s):
            reader.close()
            return
        # The main thread is still inside native code: report and end the process here.
        try:
            self.on_stop(Stopped(signum))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)
