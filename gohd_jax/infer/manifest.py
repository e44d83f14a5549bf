"""Batch inference over a manifest (``gohd animate --manifest jobs.csv``), streamed.

A manifest is a CSV with a header row: ``image,audio,out`` and any of ``MANIFEST_COLUMNS``. Its rows
are never held all at once: they are read one by one, each prepared on the host (image and audio
decoded, face cropped, source descriptors measured, audio features computed) by worker threads
ahead of the device, gathered in windows of ``window`` rows, sorted by length inside the window
(similar lengths share a batch: little padding), and handed to the device loop ``batch`` clips at a
time through a bounded queue. Host memory is bounded by about two windows of prepared rows
(a 10 s row holds about 1.4 MB: crop, waveform, mel windows, motion condition), whatever the
manifest's length, and host preparation of the next window runs while the device renders this one.

Nothing is lost:

* every clip is written to ``OUT.partial`` and renamed to ``OUT`` when complete (``Mp4Writer``), so an ``OUT``
  that exists is whole; a rerun of the same command skips rows whose ``OUT`` exists (a crash or
  ``kill -9`` loses at most the batch in flight); ``overwrite`` redoes every row;
* a results file (JSON lines, flushed line by line) gets one line per row as it finishes:
  ``{"row", "out", "status": ok | failed | exists, "frames", "seconds" (of video), "render_s"
  (wall seconds of its batch), "error", "shard"}``;
* a row that fails on the host (unreadable input, no face where one is required, a bad control) is
  reported with its reason and never reaches a batch; a batch that raises on the device is split in
  halves and each half rendered again (padding keeps the compiled shapes), down to the row that
  fails alone, so the other rows of a batch are always rendered (their frames do not depend on
  their batch-mates: ``gohd_jax/infer/animate.py``).

Many hosts: ``shard_of(out, num_shards)`` gives each row a shard from a stable hash of its ``out``
column as written in the manifest, so reruns and added rows keep their shard; each shard writes its
own results file (``results_path``), and ``merge_results`` joins them and lists the rows that are
missing, failed or rendered twice.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["MANIFEST_COLUMNS", "ManifestError", "Row", "read_header", "iter_rows", "shard_of", "results_path",
           "ResultsLog", "Failed", "HostPipeline", "merge_results", "error_text", "peak_rss_mb"]

MANIFEST_COLUMNS = ("image", "audio", "out", "pose", "gaze", "blink", "exp", "drive", "emotion", "pose_scale",
                    "exp_scale", "seed", "source_descriptors")
REQUIRED = ("image", "audio", "out")
PATH_COLUMNS = ("image", "audio", "out", "source_descriptors")
CONTROL_COLUMNS = ("pose", "gaze", "blink", "exp", "drive")  # a value may be a file: FILE.npy, VIDEO, DESC.npz


def _is_path(value: str) -> bool:
    from gohd_jax.infer.reference import is_reference

    return value.endswith(".npy") or is_reference(value)


class ManifestError(ValueError):
    """A manifest that cannot be used at all (missing file, no rows, bad header): one line."""


@dataclasses.dataclass
class Row:
    """One manifest row. ``index``: its 1-based number among the data rows; ``key``: its ``out``
    column as written (the shard hash and the results file use it); ``values``: the columns, with
    relative paths resolved against the manifest's folder."""
    index: int
    key: str
    values: dict[str, str]

    @property
    def out(self) -> Path:
        return Path(self.values["out"])


def read_header(path: str | Path) -> list[str]:
    """The manifest's columns, checked (required ones present, none unknown)."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{p}: no such manifest file")
    with open(p, newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise ManifestError(f"{p}: the manifest is empty")
    header = [h.strip() for h in header]
    need = [c for c in REQUIRED if c not in header]
    if need:
        raise ManifestError(f"{p}: the manifest lacks the column(s) {need} (header: image,audio,out,...)")
    unknown = [k for k in header if k not in MANIFEST_COLUMNS]
    if unknown:
        raise ManifestError(f"{p}: unknown column(s) {unknown}; the columns are {', '.join(MANIFEST_COLUMNS)}")
    return header


def iter_rows(path: str | Path) -> Iterator[Row]:
    """The manifest's rows, one at a time (the file is never read whole)."""
    p = Path(path)
    read_header(p)
    base = p.parent
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        for k, raw in enumerate(reader, start=1):
            values = {(key or "").strip(): (v or "").strip() for key, v in raw.items() if key is not None}
            key = values.get("out", "")
            for col in PATH_COLUMNS + tuple(c for c in CONTROL_COLUMNS if _is_path(values.get(c, ""))):
                if values.get(col) and not Path(values[col]).is_absolute():
                    values[col] = str(base / values[col])
            if values.get("emotion"):  # one or two references, comma-separated
                values["emotion"] = ",".join(p if Path(p).is_absolute() else str(base / p)
                                             for p in (v.strip() for v in values["emotion"].split(",")) if p)
            yield Row(k, key, values)


def shard_of(key: str, num_shards: int) -> int:
    """The shard of a row: sha256 of its ``out`` column as written, modulo ``num_shards``."""
    if num_shards <= 1:
        return 0
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % num_shards


def results_path(manifest: str | Path, num_shards: int = 1, shard_index: int = 0,
                 override: str | Path | None = None) -> Path:
    """``jobs.results.jsonl`` next to the manifest (``jobs.results-00001-of-00004.jsonl`` for shard
    1 of 4), or ``override`` (with the same shard suffix when there are several shards)."""
    if override is not None:
        base = Path(override)
        if num_shards <= 1:
            return base
        return base.with_name(f"{base.stem}-{shard_index:05d}-of-{num_shards:05d}{base.suffix or '.jsonl'}")
    m = Path(manifest)
    suffix = "" if num_shards <= 1 else f"-{shard_index:05d}-of-{num_shards:05d}"
    return m.with_name(f"{m.stem}.results{suffix}.jsonl")


class ResultsLog:
    """Appends one JSON line per finished row, flushed at once (thread-safe). ``truncate``: start
    afresh (``--overwrite``)."""

    def __init__(self, path: str | Path, *, truncate: bool = False, shard: int = 0):
        self.path = Path(path)
        self.shard = shard
        self._f = open(self.path, "w" if truncate else "a")
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.first_failures: list[dict] = []  # the first 20 failed lines, for the summary

    def write(self, row: Row, status: str, *, frames: int = 0, render_s: float | None = None,
              error: str | None = None) -> None:
        line = {"row": row.index, "out": row.key, "status": status, "frames": int(frames),
                "seconds": round(frames / 25.0, 3), "render_s": None if render_s is None else round(render_s, 3),
                "error": error, "shard": self.shard}
        with self._lock:
            self._f.write(json.dumps(line) + "\n")
            self._f.flush()
            self.counts[status] = self.counts.get(status, 0) + 1
            if status == "failed" and len(self.first_failures) < 20:
                self.first_failures.append(line)

    def close(self) -> None:
        with self._lock:
            self._f.close()


@dataclasses.dataclass
class Failed:
    """A row that failed on the host: it never reaches a batch."""
    row: Row
    error: str


class HostPipeline:
    """Rows -> batches of prepared rows, prepared ahead of the device.

    ``prepare(row)`` runs in ``workers`` threads (0: in the pipeline's own thread) and returns a
    prepared row, or raises (the row becomes a ``Failed`` with the exception's message).
    ``skip(row)`` (optional) is asked first, in the reading thread: a row it accepts is not
    prepared. Prepared rows are gathered ``window`` at a time, sorted by ``length(prepared)``
    (when given) and cut into batches of ``batch``; iterating yields ``Failed`` items and batches (lists) in
    that order. At most about two windows are held: the one being prepared and the batches
    waiting in the queue.

    ``stats``: ``host_wait_s`` (time the consumer waited for the next item), ``last_row_read_s``
    (seconds from ``start``, default now, to the reader reaching the manifest's end), ``rows_read``.
    """

    def __init__(self, rows: Iterable[Row], prepare: Callable[[Row], Any], *, batch: int, window: int,
                 workers: int = 2, length: Callable[[Any], int] | None = None,
                 skip: Callable[[Row], bool] | None = None, start: float | None = None):
        if batch < 1 or window < 1:
            raise ValueError(f"batch and window must be >= 1, got {batch}, {window}")
        self.rows, self.prepare, self.length, self.skip = rows, prepare, length, skip
        self.batch = int(batch)
        self.window = max(int(window), self.batch)
        self.workers = int(workers)
        self._queue: queue.Queue = queue.Queue(maxsize=-(-self.window // self.batch) + 1)
        self._stop = threading.Event()
        self.stats = {"host_wait_s": 0.0, "last_row_read_s": None, "rows_read": 0}
        self._start = time.perf_counter() if start is None else start
        self._thread = threading.Thread(target=self._produce, name="gohd-host-pipeline", daemon=True)
        self._thread.start()

    # producer side -------------------------------------------------------------------------

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _prepare_one(self, row: Row):
        try:
            return self.prepare(row)
        except Exception as e:  # a bad row: reported, the others go on
            return Failed(row, error_text(e))

    def _windows(self) -> Iterator[list[Row]]:
        window: list[Row] = []
        for row in self.rows:
            self.stats["rows_read"] += 1
            if self._stop.is_set():
                return
            if self.skip is not None and self.skip(row):
                continue
            window.append(row)
            if len(window) == self.window:
                yield window
                window = []
        self.stats["last_row_read_s"] = time.perf_counter() - self._start
        if window:
            yield window

    def _produce(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="gohd-prepare") if self.workers > 0 else None
        try:
            for window in self._windows():
                done = (list(pool.map(self._prepare_one, window)) if pool is not None
                        else [self._prepare_one(r) for r in window])
                ready = []
                for item in done:
                    if isinstance(item, Failed):
                        if not self._put(item):
                            return
                    else:
                        ready.append(item)
                if self.length is not None:
                    ready.sort(key=self.length)
                for i in range(0, len(ready), self.batch):
                    if not self._put(ready[i:i + self.batch]):
                        return
            self._put(None)
        except BaseException as e:  # a bug, not a bad row: the consumer re-raises it
            self._put(e)
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    # consumer side -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Failed | list]:
        try:
            while True:
                t0 = time.perf_counter()
                item = self._queue.get()
                self.stats["host_wait_s"] += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def error_text(e: BaseException) -> str:
    """One line for a results file: a bad input's own message (ValueError: it says why), else the
    exception's type and message."""
    text = " ".join(str(e).split())[:300]
    return text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"


# ------------------------------------------------------------------------------------ results

def read_results(paths: Sequence[str | Path]) -> list[dict]:
    """Every line of the results files (a torn last line, from a kill, is ignored)."""
    lines = []
    for p in paths:
        with open(p) as f:
            for text in f:
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:
                    log.warning("%s: an incomplete line ignored", p)
    return lines


def merge_results(manifest: str | Path, results: Sequence[str | Path]) -> dict:
    """Joins the shards' results files against the manifest: for each row its last status
    (``ok`` or ``exists`` = done), and the rows missing (no line, or a done line but no output
    file), failed (their last error) or rendered more than once (``ok`` in several lines)."""
    lines = read_results(results)
    by_row: dict[int, list[dict]] = {}
    for line in lines:
        by_row.setdefault(int(line["row"]), []).append(line)
    report = {"rows": 0, "done": 0, "failed": [], "missing": [], "rendered_twice": [], "results_files": len(results)}
    for row in iter_rows(manifest):
        report["rows"] += 1
        got = by_row.get(row.index, [])
        if sum(1 for g in got if g["status"] == "ok") > 1:
            report["rendered_twice"].append({"row": row.index, "out": row.key})
        last = got[-1] if got else None
        done = [g for g in got if g["status"] in ("ok", "exists")]
        if done and row.out.exists():
            report["done"] += 1
        elif last is not None and last["status"] == "failed":
            report["failed"].append({"row": row.index, "out": row.key, "error": last.get("error")})
        else:
            report["missing"].append({"row": row.index, "out": row.key,
                                      "why": "output file gone" if done else "no result line"})
    return report


def peak_rss_mb() -> float:
    """This process's peak resident set size (MiB)."""
    import resource
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)
