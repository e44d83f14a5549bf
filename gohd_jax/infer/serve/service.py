"""The engine side of ``gohd serve``: requests in, batched renders out.

``AnimateService`` holds what ``gohd animate --manifest`` holds (the bundle and face models in
``cli.Context``, an ``Animate`` engine per engine-level setting, the manifest's row preparation
and its ``BatchRenderer``), and a ``BatchQueue`` in front of the device:

1. ``prepare(request)`` runs in the caller's thread (decode, face crop, source descriptors,
   references, audio features: the manifest's ``prepare_row``, on a one-row manifest built from
   the request), so many requests are prepared at once, as the manifest's host workers do;
2. ``submit`` queues the prepared clip under its batch key (sampler, steps, precision): clips
   batch together only when one engine can render them;
3. one device thread takes due batches (``--max-batch-clips``, ``--max-wait-ms``), pads each to a
   power-of-two bucket of clips (one compile per engine and bucket: 1, 2, 4, ... up to the
   maximum) and renders it with ``BatchRenderer``; each clip's frames go to its own mp4 as they
   come, and its ticket is resolved with the file.

A clip's frames do not depend on what else is in its batch (``Animate``'s per-clip keys), so a
served clip equals ``gohd animate``'s for the same inputs and seed. ``stats()`` gives the counters
of ``GET /stats``. Outputs live in one folder and are deleted ``keep_outputs_s`` after they are
written.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from gohd_jax.infer.serve.batcher import BatchQueue, Busy, Ticket

log = logging.getLogger("gohd.serve")

__all__ = ["ServeOptions", "Request", "Progress", "AnimateService", "Busy", "RequestError", "bucket"]

SAMPLERS = ("ddpm", "ddim")
DDPM_STEPS = 150  # the release's DDPM always runs its 150 steps


class RequestError(ValueError):
    """A request that cannot be served as asked: one line for the page or the API client."""


@dataclasses.dataclass
class ServeOptions:
    """The server's settings (``gohd serve``'s flags)."""
    checkpoint: str
    max_batch_clips: int = 4
    max_wait_ms: float = 500.0
    max_queue: int = 32
    max_audio_s: float = 60.0
    keep_outputs_s: float = 3600.0
    render_batch: int = 16
    max_engines: int = 4
    require_face: bool = True
    deep3d: str | None = None
    lm3d: str | None = None
    l2cs: str | None = None
    landmarks: str | None = None
    outputs: str | None = None  # default: a fresh temporary folder, deleted at shutdown


@dataclasses.dataclass
class Request:
    """One clip as the page or the API asks for it: file paths and ``gohd animate``'s control
    values (strings as the flags take them; ``pose``/``gaze`` may be a reference's path)."""
    image: str
    audio: str
    pose: str = "generated"
    gaze: str = "generated"
    blink: str = "on"
    pose_scale: float = 1.0
    exp_scale: float = 1.0
    sampler: str = "ddpm"
    steps: int = DDPM_STEPS
    seed: int = 0
    precision: str = "auto"

    def key(self) -> tuple[str, int, str]:
        """The batch key: the engine-level settings (DDPM ignores ``steps``)."""
        return self.sampler, DDPM_STEPS if self.sampler == "ddpm" else int(self.steps), self.precision


@dataclasses.dataclass
class Progress:
    """What a waiting request can show: its stage, frames written of its total, warnings."""
    stage: str = "preparing"
    frames: int = 0
    total: int = 0
    warnings: list = dataclasses.field(default_factory=list)


def bucket(n: int, max_batch: int) -> int:
    """The batch size ``n`` clips are padded to: the next power of two, at most ``max_batch``."""
    return min(int(max_batch), 1 << max(0, int(n) - 1).bit_length())


class _ProgressWriter:
    """An ``Mp4Writer`` that counts the frames it is given into the request's ``Progress``."""

    def __init__(self, writer, progress: Progress):
        self.writer, self.progress = writer, progress

    def write(self, frames) -> None:
        self.progress.stage = "rendering"
        self.writer.write(frames)
        self.progress.frames += len(frames)

    def close(self) -> None:
        self.progress.stage = "encoding"
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


@dataclasses.dataclass
class _Item:
    prepared: object
    progress: Progress


class _Results:
    """``BatchRenderer``'s results sink: resolves each row's ticket."""

    def __init__(self, tickets: dict[int, Ticket]):
        self.tickets = tickets

    def write(self, row, status: str, *, frames: int = 0, render_s: float | None = None,
              error: str | None = None) -> None:
        ticket = self.tickets[row.index]
        if status == "ok":
            ticket.resolve((row.out, frames))
        else:
            ticket.fail(RequestError(error or "rendering failed"))


class AnimateService:
    """Loads the checkpoint, starts the device thread; ``animate(request)`` serves one request
    (blocking; thread-safe). See the module docstring."""

    def __init__(self, options: ServeOptions):
        from gohd_jax.infer import cli

        self.options = o = options
        if min(o.max_batch_clips, o.max_queue, o.max_engines) < 1 or o.max_wait_ms < 0 or o.max_audio_s <= 0:
            raise RequestError("--max-batch-clips, --max-queue and --max-engines must be >= 1, --max-wait-ms "
                               ">= 0, --max-audio-s > 0")
        argv = ["animate", "--checkpoint", o.checkpoint, "--render-batch", str(o.render_batch)]
        for flag in ("deep3d", "lm3d", "l2cs", "landmarks"):
            if getattr(o, flag):
                argv += [f"--{flag}", getattr(o, flag)]
        self.args = cli.build_parser().parse_args(argv)
        self.args.require_face = o.require_face
        self.ctx = cli.Context(self.args, progress=False)
        if o.require_face and self.ctx.faces is None:
            log.warning("no face detector: portraits are centre-cropped, a portrait without a face is not refused")
            self.args.require_face = False
        self._cli = cli
        self._features = _Features(self.ctx.bundle)
        self._own_outputs = o.outputs is None
        self.outputs = Path(o.outputs or tempfile.mkdtemp(prefix="gohd_serve_"))
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.queue = BatchQueue(max_batch=o.max_batch_clips, max_wait_s=o.max_wait_ms / 1000.0,
                                max_pending=o.max_queue)
        self.engines: collections.OrderedDict[tuple, object] = collections.OrderedDict()  # most recent last
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "ok": 0, "failed": 0, "refused_busy": 0, "refused_input": 0,
                        "batches_run": 0, "clips_batched": 0, "frames": 0}
        self._render_s = 0.0
        self._latencies: collections.deque[float] = collections.deque(maxlen=1000)
        self._next_index = 0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._device = threading.Thread(target=self._device_loop, name="gohd-serve-device", daemon=True)
        self._device.start()
        self._janitor = threading.Thread(target=self._clean_loop, name="gohd-serve-cleanup", daemon=True)
        self._janitor.start()

    # ----------------------------------------------------------------------------- requests

    def check(self, request: Request) -> None:
        """Refuses settings no engine takes (before any file is read)."""
        from gohd_jax.infer.cli import PRECISIONS

        if request.sampler not in SAMPLERS:
            raise RequestError(f"sampler {request.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if not 1 <= int(request.steps) <= DDPM_STEPS:
            raise RequestError(f"steps {request.steps}: use 1..{DDPM_STEPS}")
        if request.precision not in PRECISIONS:
            raise RequestError(f"precision {request.precision!r}: use one of {', '.join(PRECISIONS)}")
        for name in ("pose_scale", "exp_scale"):
            value = float(getattr(request, name))
            if not (math.isfinite(value) and 0.0 <= value <= 3.0):
                raise RequestError(f"{name} {value}: use a number in 0..3")
        if not request.image:
            raise RequestError("no portrait: upload an image")
        if not request.audio:
            raise RequestError("no speech: upload or record audio")

    def prepare(self, request: Request, progress: Progress | None = None):
        """The request as the manifest's prepared row (``batch_render.Prepared``); raises
        RequestError with the cause for a bad input."""
        cli = self._cli
        progress = progress or Progress()
        self.check(request)
        with self._lock:
            self._next_index += 1
            index = self._next_index
        out = self.outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.mp4"
        values = {"image": request.image, "audio": request.audio, "out": str(out), "pose": request.pose,
                  "gaze": request.gaze, "blink": request.blink, "pose_scale": repr(float(request.pose_scale)),
                  "exp_scale": repr(float(request.exp_scale)), "seed": str(int(request.seed))}
        from gohd_jax.infer.manifest import Row

        row = Row(index, out.name, values)
        seconds = audio_seconds(request.audio)
        if seconds is not None and seconds > self.options.max_audio_s + 0.1:  # before it is decoded
            raise RequestError(f"the audio is {seconds:.1f} s long; this server renders at most "
                               f"{self.options.max_audio_s:g} s per clip")
        try:
            cli.check_video_references(self.args, [(k, values[k]) for k in ("pose", "gaze")])
            prepared = cli.prepare_row(self.ctx, self._features, self.args)(row)
        except cli.NoFaceError:
            raise RequestError(f"no face found in the portrait {Path(request.image).name}: upload a photo with "
                               "a visible face") from None
        except (cli.UsageError, ValueError) as e:
            text = " ".join(str(e).split())
            for path in {request.image, request.audio, request.pose, request.gaze}:  # uploads by their own name
                if path and os.sep in str(path):
                    text = text.replace(str(path), Path(path).name)
            raise RequestError(text) from None
        seconds = len(prepared.job.wav) / 16000
        if seconds > self.options.max_audio_s:
            raise RequestError(f"the audio is {seconds:.1f} s long; this server renders at most "
                               f"{self.options.max_audio_s:g} s per clip")
        if prepared.job.controls.idle:
            progress.warnings.append("the audio is silent (RMS below -60 dBFS): this is an idle clip, the lips "
                                     "held at the portrait's, pose, gaze and blinks as asked")
        progress.total = prepared.feats["frames"]
        return prepared

    def submit(self, request: Request, prepared, progress: Progress) -> Ticket:
        """Queues a prepared clip; raises ``Busy`` when the queue is full."""
        progress.stage = "queued"
        item = _Item(prepared, progress)
        try:
            ticket = self.queue.submit(request.key(), item)
        except Busy:
            with self._lock:
                self._counts["refused_busy"] += 1
            raise
        with self._lock:
            self._counts["requests"] += 1
        return ticket

    def animate(self, request: Request, progress: Progress | None = None,
                on_wait=None, poll_s: float = 0.25) -> tuple[Path, int]:
        """Serves one request: (the mp4's path, its frames). Raises RequestError (bad input or a
        failed render) or Busy. ``on_wait(progress, position)`` is called every ``poll_s`` while it
        waits (the page's progress bar)."""
        progress = progress or Progress()
        start = time.monotonic()
        if len(self.queue) >= self.options.max_queue:  # refused before any host work (submit checks again)
            with self._lock:
                self._counts["refused_busy"] += 1
            raise Busy(f"{self.options.max_queue} requests are already waiting")
        try:
            prepared = self.prepare(request, progress)
        except RequestError:
            with self._lock:
                self._counts["refused_input"] += 1
            raise
        ticket = self.submit(request, prepared, progress)
        while not ticket.wait(poll_s):
            if on_wait is not None:
                on_wait(progress, self.queue.position(ticket))
        with self._lock:
            self._latencies.append(time.monotonic() - start)  # preparation, queue, render and encoding
            self._counts["ok" if ticket.error is None else "failed"] += 1
        if ticket.error is not None:
            raise ticket.error
        return ticket.result

    # ----------------------------------------------------------------------------- device

    def engine(self, key: tuple[str, int, str]):
        """The ``Animate`` engine for a batch key, built the first time it is asked for; at most
        ``max_engines`` are kept (the least recently used is dropped with its compiled programs,
        so requests cycling through sampler settings cannot grow memory without bound)."""
        from gohd_jax.infer.animate import Animate, Sampling

        with self._lock:
            if key in self.engines:
                self.engines.move_to_end(key)
                return self.engines[key]
        sampler, steps, precision = key
        t0 = time.perf_counter()
        engine = Animate(self.ctx.bundle, sampling=Sampling(sampler, steps),
                         render_batch=self.options.render_batch, precision=precision)
        with self._lock:  # stats() lists the engines from other threads
            while len(self.engines) >= self.options.max_engines:
                dropped, _ = self.engines.popitem(last=False)
                log.info("engine %s dropped (--max-engines %d)", dropped, self.options.max_engines)
            self.engines[key] = engine
        log.info("engine %s ready in %.1f s", key, time.perf_counter() - t0)
        return engine

    def _device_loop(self) -> None:
        from gohd_jax.infer.batch_render import BatchRenderer

        while True:
            tickets = self.queue.next_batch(timeout=0.5)
            if not tickets:
                if self._stop.is_set():  # closed and drained
                    return
                continue
            for t in tickets:
                t.item.progress.stage = "motion (expression, pose, gaze)"
            try:
                engine = self.engine(tickets[0].key)
                by_row = {t.item.prepared.row.index: t for t in tickets}

                def open_writer(p, engine=engine, by_row=by_row):
                    from gohd_jax.infer.mp4 import Mp4Writer

                    return _ProgressWriter(Mp4Writer(p.row.out, engine.size, audio=p.job.wav),
                                           by_row[p.row.index].item.progress)

                renderer = BatchRenderer(engine, lambda n: bucket(n, self.options.max_batch_clips),
                                         _Results(by_row), start=time.perf_counter(), open_writer=open_writer)
                t0 = time.perf_counter()
                renderer([t.item.prepared for t in tickets])
                dt = time.perf_counter() - t0
            except Exception as e:  # an engine that cannot be built: every request of the batch fails
                log.exception("a batch of %d failed", len(tickets))
                for t in tickets:
                    if not t.done:
                        t.fail(RequestError(f"rendering failed: {type(e).__name__}: {e}"))
                continue
            finally:
                for t in tickets:  # never leave a request waiting
                    if not t.done:
                        t.fail(RequestError("rendering failed"))
            with self._lock:
                self._counts["batches_run"] += 1
                self._counts["clips_batched"] += len(tickets)
                self._counts["frames"] += renderer.frames
                self._render_s += dt
            log.info("batch of %d clips (%s): %d frames in %.1f s", len(tickets), tickets[0].key, renderer.frames, dt)

    # ----------------------------------------------------------------------------- upkeep

    def _clean_loop(self) -> None:
        period = max(1.0, min(60.0, self.options.keep_outputs_s / 4))
        while not self._stop.wait(period):
            self.clean_outputs()

    def clean_outputs(self, now: float | None = None) -> int:
        """Deletes outputs older than ``keep_outputs_s``; returns how many."""
        now = time.time() if now is None else now
        gone = 0
        for f in self.outputs.glob("*.mp4*"):
            try:
                if now - f.stat().st_mtime > self.options.keep_outputs_s:
                    f.unlink()
                    gone += 1
            except FileNotFoundError:
                pass
        return gone

    @property
    def alive(self) -> bool:
        """The device thread is running (``GET /healthz``)."""
        return self._device.is_alive()

    def stats(self) -> dict:
        """The counters of ``GET /stats`` (seconds; ``frames_per_s``: frames over the seconds the
        device spent on batches; latency: from a request's arrival to its mp4, over the last 1000)."""
        with self._lock:
            c = dict(self._counts)
            lat = sorted(self._latencies)
            render_s = self._render_s
            engines = [list(k) for k in self.engines]
        pct = lambda q: round(float(np.percentile(lat, q)), 3) if lat else None  # noqa: E731
        return {
            "queue_length": len(self.queue), "requests": c["requests"], "ok": c["ok"], "failed": c["failed"],
            "refused_busy": c["refused_busy"], "refused_input": c["refused_input"],
            "batches_run": c["batches_run"],
            "mean_batch_size": round(c["clips_batched"] / c["batches_run"], 3) if c["batches_run"] else 0.0,
            "frames": c["frames"], "render_s": round(render_s, 3),
            "frames_per_s": round(c["frames"] / render_s, 2) if render_s > 0 else 0.0,
            "latency_p50_s": pct(50), "latency_p95_s": pct(95),
            "engines": engines, "max_batch_clips": self.options.max_batch_clips,
            "max_wait_ms": self.options.max_wait_ms, "uptime_s": round(time.monotonic() - self._started, 1),
        }

    def close(self) -> None:
        """Stops taking requests, lets the device thread finish what is queued, removes a
        temporary outputs folder."""
        self.queue.close()
        self._stop.set()
        self._device.join(timeout=60)
        if self._own_outputs:
            shutil.rmtree(self.outputs, ignore_errors=True)


def audio_seconds(path: str) -> float | None:
    """The duration a file's header gives (libsndfile, else the container's), None if it gives none
    (the decoded length is checked then)."""
    try:
        import soundfile

        return float(soundfile.info(path).duration)
    except Exception:
        pass
    try:
        import av

        with av.open(path) as c:
            return None if c.duration is None else c.duration / 1e6
    except Exception:
        return None


class _Features:
    """The audio features ``prepare_row`` asks an engine for; they depend on the bundle only."""

    def __init__(self, bundle):
        self.condition = bundle.pose_spec.condition

    def features(self, job) -> dict:
        from gohd_jax.infer.animate import clip_features

        return clip_features(job.wav, self.condition)
