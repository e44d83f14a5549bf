"""Training metrics: a periodic log line, TensorBoard event files and a JSONL file.

Only process 0 writes. Files in the workdir: ``metrics.jsonl`` (one JSON object
per logged step) and ``tensorboard/`` (event files, via tensorboardX, no
TensorFlow needed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger("gohd_jax.train")


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricWriter:
    def __init__(self, workdir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._jsonl.flush()
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
            f"{metrics.get('examples_per_s', float('nan')):.1f} ex/s ETA {_fmt_time(metrics.get('eta_s', float('nan')))}")
