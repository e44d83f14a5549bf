"""Rendering prepared clips in batches: the one device loop of ``gohd animate --manifest`` and
``gohd serve``.

A ``Prepared`` clip (its row, its ``ClipJob``, its audio features, the host seconds spent on it)
goes into a batch; ``BatchRenderer`` pads the batch to a fixed number of clips (one compile per
batch size), runs ``Animate.run`` once for the batch, writes each clip to its mp4 (``OUT.partial``,
renamed when complete) and reports each row's outcome to a results object (``.write(row, status,
frames=, render_s=, error=)``: the manifest's ``ResultsLog`` or the server's request table). A
batch that raises is split in halves and rendered again, down to the clip that fails, so one bad
clip never fails its neighbours.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

log = logging.getLogger("gohd")

__all__ = ["Prepared", "NullWriter", "BatchRenderer"]


@dataclasses.dataclass
class Prepared:
    """A row ready for the device: its job, its audio features and the host seconds per stage."""
    row: object
    job: object
    feats: dict
    times: dict


class NullWriter:
    """Swallows the frames of a batch's padding clips."""

    def write(self, frames):
        pass


class BatchRenderer:
    """Renders batches of prepared rows, each clip to OUT.partial then OUT, one results line per
    row; a batch that raises is split in halves and rendered again, down to the row that fails.

    ``batch``: the clips every batch is padded to (an int), or a function of the batch's length
    (``gohd serve``'s power-of-two buckets). ``open_writer(prepared)``: the clip's frame sink
    (default: an ``Mp4Writer`` to ``prepared.row.out`` with the clip's audio; it must have
    ``write``, ``close`` and ``abort``)."""

    def __init__(self, engine, batch: int | Callable[[int], int], results, *, start: float,
                 open_writer: Callable | None = None):
        self.engine, self.results, self.start = engine, results, start
        self.pad_to = batch if callable(batch) else (lambda n, b=int(batch): b)
        self.open_writer = open_writer or self._mp4
        self.frames = 0
        self.run_s = 0.0  # seconds inside the engine (a batch's writers opened, rendered, encoded)
        self.stage_s: dict[str, float] = {}
        self.first_output_s: float | None = None  # seconds from ``start`` to the first complete clip

    def _mp4(self, p: Prepared):
        from gohd_jax.infer.mp4 import Mp4Writer

        return Mp4Writer(p.row.out, self.engine.size, audio=p.job.wav)

    def __call__(self, group: list) -> None:
        from gohd_jax.infer.manifest import error_text

        pad = [group[-1]] * (self.pad_to(len(group)) - len(group))  # fixed batch sizes: one compile each
        writers = []
        t0 = time.perf_counter()
        try:
            for p in group:
                writers.append(self.open_writer(p))
            drives, times = self.engine.run([p.job for p in group + pad], writers + [NullWriter()] * len(pad),
                                            feats=[p.feats for p in group + pad])
        except Exception as e:
            for w in writers:
                w.abort()
            if len(group) == 1:
                self.results.write(group[0].row, "failed", error=error_text(e))
                log.error("row %d (%s) failed: %s", group[0].row.index, group[0].row.key, error_text(e))
                return
            h = len(group) // 2
            log.warning("a batch of %d clips failed (%s); rendering its halves again", len(group), error_text(e))
            self(group[:h])
            self(group[h:])
            return
        except BaseException:  # Ctrl-C, SIGTERM: no partial file is left as if complete
            for w in writers:
                w.abort()
            raise
        dt = time.perf_counter() - t0
        self.run_s += dt
        for stage, sec in times.seconds.items():
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + sec
        for p, w, d in zip(group, writers, drives):
            try:
                w.close()
            except Exception as e:
                w.abort()
                self.results.write(p.row, "failed", error=error_text(e))
                continue
            n = len(d["descriptors"])
            self.frames += n
            self.results.write(p.row, "ok", frames=n, render_s=dt)
            if self.first_output_s is None:
                self.first_output_s = time.perf_counter() - self.start
