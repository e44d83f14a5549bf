"""Training metrics: a periodic log line, TensorBoard event files and a JSONL file.

Only process 0 writes. Files in the workdir (a folder or a bucket URI): ``metrics.jsonl``
(one JSON object per logged step) and ``tensorboard/`` (event files, via tensorboardX, no
TensorFlow needed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

log = logging.getLogger("gohd_jax.train")


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricWriter:
    """``metrics.jsonl`` and TensorBoard events in ``workdir`` (a local folder or a bucket URI).

    A local JSONL is appended to, line by line. Object stores cannot append, so on a URI the
    file is rewritten whole (what it held before this run, plus this run's lines) at each
    ``write``: a few hundred bytes per logged step. TensorBoard goes through tensorboardX,
    which writes ``gs://`` and ``s3://`` itself (with google-cloud-storage / boto3 installed).
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._lines: list[str] | None = None
        self._tb = None
        if not enabled:
            return
        from gohd_jax.train.checkpoint import as_path, is_uri

        root = as_path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        self._path = root / "metrics.jsonl"
        if is_uri(workdir):
            self._lines = [self._path.read_text()] if self._path.exists() else []
        else:
            self._jsonl = open(os.fspath(self._path), "a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            try:
                self._tb = SummaryWriter(os.fspath(root / "tensorboard"), flush_secs=30)
            except Exception as e:  # noqa: BLE001 (e.g. gs:// without google-cloud-storage)
                log.warning("TensorBoard event files off (%s: %s); metrics.jsonl has every logged value",
                            type(e).__name__, e)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, "time": time.time(), **metrics}) + "\n"
        if self._jsonl is not None:
            self._jsonl.write(line)
            self._jsonl.flush()
        else:
            self._lines.append(line)
            self._path.write_text("".join(self._lines))
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)  # tensorboardX flushes in the background (and on close)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class Throughput:
    """Steps/s, examples/s and ETA over the last logging interval."""

    def __init__(self, start_step: int, total_steps: int, global_batch: int):
        self.total, self.batch = total_steps, global_batch
        self._t, self._step = time.perf_counter(), start_step

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        return {"steps_per_s": rate, "examples_per_s": rate * self.batch,
                "eta_s": (self.total - step) / rate if rate > 0 else float("inf")}


def log_line(step: int, total: int, metrics: dict[str, float]) -> str:
    terms = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                     if k not in ("steps_per_s", "examples_per_s", "eta_s"))
    rate = metrics.get("steps_per_s", float("nan"))
    return (f"step {step}/{total} {terms} | {rate:.2f} steps/s "
            f"{metrics.get('examples_per_s', float('nan')):.1f} ex/s "
            f"ETA {_fmt_time(metrics.get('eta_s', float('nan')))}")
