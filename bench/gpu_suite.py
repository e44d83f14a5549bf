"""The GPU benchmark suite: one script to run when an accelerator is lent, writing one JSON.

    python bench/gpu_suite.py                          # official sizes, every section (aim: <= 5 min on one H100)
    python bench/gpu_suite.py --sections a,c --out render_and_train.json
    python bench/gpu_suite.py --smoke                  # tiny models on the CPU, same code paths (~1 min)

Random-init models at the official sizes (the arithmetic and the time are the real ones),
synthetic inputs. Sections (``--sections``, letters or names, default all; they run in the order
a, b, e, g, d, c, f, the cheap ones first, and the JSON is also saved after every measured row):

a) ``render``: the animator's render frames/s at batch 1/8/64/256 (``--render-batches``), float32
   and bfloat16 (``gohd_jax.nn.policy``), the source encoded once (batch 1, shared by the batch of
   descriptor windows) and the directions Q = QR(W) computed once (``render(..., directions=Q)``);
   frames quantised to uint8 on the device, not copied to the host.
b) ``e2e``: end-to-end frames/s of 16 clips of 10 s (250 frames each), DDIM-25 and DDPM-150, split
   by stage: expression windows (``infer.expression.ExpressionWindows``), pose + gaze motion
   windows (``diffusion.windowing.WindowSampler`` / ``generate_long``), descriptors (host), render
   (source encoding, then ``--render-batch`` frames at a time, each row gathered from its clip's
   encoding, rendered, quantised and copied to the host, as ``gohd animate``'s engine does). No
   audio front end (the conditions are synthetic arrays) and no mp4 writer. The whole pipeline is
   run once untimed, then timed.
c) ``train_animator``: animator GAN train steps/s and MFU at batch 8/16/32, bfloat16, remat none
   and blocks (see "The animator train step" below).
d) ``train_denoiser``: the official pose denoiser's train step (batch 8, 150-frame windows, eps
   MSE, Adam 6e-4, EMA: ``MotionDiffusionTask.train_step`` + the trainer's step), steps/s and MFU.
e) ``latency``: time to the first frame on the host and real-time factor (wall / audio seconds)
   of one 10 s clip at batch 1, DDIM-25 and DDPM-150 (as b, one clip; the first frame waits for
   the clip's whole motion and expression, as in the engine).
g) ``metrics``: frames/s of gohd-eval's metric networks at batch 1/32/128 (``--metric-batches``;
   smoke 1): SyncNet's lip stream (a 5-frame 224x224 window per frame) and audio stream,
   pytorch-fid's InceptionV3 (299x299), ArcFace iresnet100 (112x112); float32 at HIGHEST
   precision, as ``gohd-eval`` runs them on every backend.
f) ``memory``: per compiled program its compile (and lowering) time, XLA's FLOPs and memory
   analysis (arguments, outputs, temporaries; XLA counts a loop body once, so a sampler program
   shows the FLOPs of one denoiser call); the device's ``peak_bytes_in_use`` after each section
   (``device.memory_stats()``, where the backend has it; cumulative over the process).

MFU = FLOPs / (seconds x peak), FLOPs from XLA's cost analysis of the compiled program
(``compile().cost_analysis()['flops']``; the lowered, unoptimised program's count is kept beside
it), peak the dense bfloat16 FLOP/s of the chip (H100 SXM / H200 989e12, H100 PCIe 756e12, A100
312e12, from ``jax.devices()[0].device_kind``; ``--peak-tflops`` overrides). For a train step
with remat the useful work is the remat-none program's FLOPs at the same batch (``mfu``); the
program's own count, recomputation included, gives ``hfu``. Render and the denoiser step report
the same ratio against the bfloat16 peak, also for float32 rows.

Compiles: every section lowers its programs, then compiles them ahead of time in
``--compile-workers`` threads (XLA releases the GIL while compiling; concurrent compiles also
share the GPU for autotuning, so use ``--compile-workers 1`` for clean per-program compile
times). The window samplers and the expression windows get their compiled programs installed in
place of their ``jax.jit`` (a mismatch falls back to the jit, which then compiles during the
untimed warm-up run). Models are built on the host CPU (classic threefry, fast to initialise)
and their state is put on the device.

The train steps are the tasks' own: ``AnimatorTask.train_step`` and
``MotionDiffusionTask.train_step``, wrapped as the trainer wraps them
(``gohd_jax.train.state.step_with_ema``: step + 1, EMA), jitted with the state donated. The
trainer itself imports ml_collections and Grain, which the lent GPU image lacks, so the tasks get
their settings from plain dicts (``TaskConfig``) and the models are built here, for
``configs/animator.py:official``: generator ``AnimatorConfig(release_grid=False)``, StyleGAN2
discriminator, random frozen VGG19 (the perceptual pyramid; ``--perceptual ms_ssim`` for the L1 +
MS-SSIM + gradient losses used when no VGG19 weights are given), loss weights l1 1, vgg 1, gan 1,
changed 0, the GAN on from step 0, Adam(b1 0) at LIA's rates, EMA 0.999. A slow test in
``tests/test_gpu_suite.py`` checks the step against the real ``Trainer._train_step`` on the CPU
(tiny config: same state and batch in, same losses, parameters, optimizer state and EMA out).

Output: a markdown table per section on stdout, progress on stderr, the JSON (``--out``,
default ``gpu_suite.json``) rewritten after every section, so a run cut short still reports.
Imports only jax, flax, optax, numpy and the model / sampler / loss modules (no Grain,
ml_collections, librosa, av, scipy, soundfile, tqdm, TFDS).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import platform
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Room for the batch-256 float32 render: let JAX's GPU allocator take more than its default 75%.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from gohd_jax.diffusion import samplers, windowing  # noqa: E402
from gohd_jax.infer.expression import ExpressionWindows  # noqa: E402
from gohd_jax.models.animator import AnimatorConfig, SemanticAnimator  # noqa: E402
from gohd_jax.models.discriminator import Discriminator  # noqa: E402
from gohd_jax.models.expression import ExpressionConfig, FrameExpression, TwoStageExpression  # noqa: E402
from gohd_jax.models.motion_denoiser import MotionDenoiser, MotionDenoiserConfig  # noqa: E402
from gohd_jax.infer.animate import quantise  # noqa: E402
from gohd_jax.nn import policy as policy_lib  # noqa: E402
from gohd_jax.train.state import StepContext, TrainState, step_with_ema  # noqa: E402

SECTIONS = {"a": "render", "b": "e2e", "c": "train_animator", "d": "train_denoiser", "e": "latency",
            "f": "memory", "g": "metrics"}
FPS = 25
RADIUS = 13  # the animator reads a 27-frame descriptor window centred on the frame

# Dense bfloat16 FLOP/s by device kind (first match, lower-case substrings).
PEAK_BF16 = (("h100 pcie", 756e12), ("h100 nvl", 835e12), ("gh200", 989e12), ("h200", 989e12),
             ("h100", 989e12), ("a100", 312e12))

# configs/animator.py:official (LIA): Adam(b1=0), G lr 0.002 * 4/5, D lr 0.002 * 16/17,
# beta2 = 0.99 ** (the same ratios); EMA 0.999 with configs/common.py's warm-up; loss weights;
# the GAN from step 0.
ANIMATOR_OFFICIAL = {"g_lr": 0.002 * 4 / 5, "d_lr": 0.002 * 16 / 17, "g_beta2": 0.99 ** (4 / 5),
                     "d_beta2": 0.99 ** (16 / 17), "ema_decay": 0.999, "ema_warmup": True, "gan_start_step": 0,
                     "loss": {"l1": 1.0, "vgg": 1.0, "ms_ssim": 1.0, "gradient": 1.0, "gan": 1.0,
                              "changed": 0.0}}
# configs/motion.py:pose: Adam 6e-4, no clipping, EMA 0.999, data_scale 1, no cond dropout.
DENOISER_OFFICIAL = {"learning_rate": 6e-4, "ema_decay": 0.999, "ema_warmup": True}


# ======================================================================================== plan

@dataclasses.dataclass
class Plan:
    """Sizes of every section: the official ones, or tiny ones for ``--smoke``."""
    smoke: bool
    animator: AnimatorConfig
    train_animator: AnimatorConfig
    pose: MotionDenoiserConfig
    gaze: MotionDenoiserConfig
    expression: ExpressionConfig
    two_stage: bool
    render_batches: list[int]
    clips: int
    seconds: float
    render_batch: int
    motion_window: int
    alignment: str
    expression_window: int
    samplers: list[tuple[str, int]]
    train_batches: list[int]
    remats: list[str]
    perceptual: str
    denoiser_batch: int
    denoiser_window: int
    denoiser_remats: list[str]
    latency_seconds: float
    min_time: float
    train_min_steps: int
    metric_batches: list[int] = dataclasses.field(default_factory=lambda: [1, 32, 128])


def make_plan(a) -> Plan:
    two_stage = a.expression == "two_stage"
    samplers_ = [parse_sampler(s) for s in a.samplers.split(",")]
    if a.smoke:
        return Plan(
            smoke=True, animator=AnimatorConfig.tiny(), train_animator=AnimatorConfig.tiny(release_grid=False),
            pose=MotionDenoiserConfig.tiny(6, 6), gaze=MotionDenoiserConfig.tiny(2, 2),
            expression=ExpressionConfig.tiny(21 if two_stage else 0), two_stage=two_stage,
            render_batches=ints(a.render_batches, [2]), clips=a.clips or 2, seconds=a.seconds or 1.0,
            render_batch=a.render_batch or 8, motion_window=16, alignment="release", expression_window=10,
            samplers=samplers_, train_batches=ints(a.train_batches, [1]), remats=strs(a.remats or "none"),
            perceptual=a.perceptual, denoiser_batch=a.denoiser_batch or 2, denoiser_window=16,
            denoiser_remats=strs(a.denoiser_remats), latency_seconds=a.latency_seconds or 1.0,
            min_time=a.min_time if a.min_time is not None else 0.0, train_min_steps=a.train_steps or 1,
            metric_batches=ints(a.metric_batches, [1]))
    return Plan(
        smoke=False, animator=AnimatorConfig.official(), train_animator=AnimatorConfig(release_grid=False),
        pose=MotionDenoiserConfig.pose(), gaze=MotionDenoiserConfig.gaze(),
        expression=ExpressionConfig.two_stage() if two_stage else ExpressionConfig.released(),
        two_stage=two_stage, render_batches=ints(a.render_batches, [1, 8, 64, 256]), clips=a.clips or 16,
        seconds=a.seconds or 10.0, render_batch=a.render_batch or 64, motion_window=150, alignment="release",
        expression_window=30, samplers=samplers_, train_batches=ints(a.train_batches, [8, 16, 32]),
        remats=strs(a.remats or "none,blocks"), perceptual=a.perceptual, denoiser_batch=a.denoiser_batch or 8,
        denoiser_window=150, denoiser_remats=strs(a.denoiser_remats),
        latency_seconds=a.latency_seconds or 10.0, min_time=a.min_time if a.min_time is not None else 1.0,
        train_min_steps=a.train_steps or 5, metric_batches=ints(a.metric_batches, [1, 32, 128]))


def ints(s: str | None, default: list[int]) -> list[int]:
    return [int(x) for x in s.split(",")] if s else default


def strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_sampler(s: str) -> tuple[str, int]:
    s = s.strip().lower()
    method = s.rstrip("0123456789")
    if method not in ("ddim", "ddpm"):
        raise SystemExit(f"--samplers: {s!r} is not ddimN or ddpm150")
    steps = int(s[len(method):] or samplers.NUM_TRAIN_STEPS)
    if method == "ddpm" and steps != samplers.NUM_TRAIN_STEPS:
        raise SystemExit("--samplers: the release's DDPM always runs 150 steps: write ddpm150")
    return method, steps


def sampler_name(spec: tuple[str, int]) -> str:
    return f"{spec[0].upper()}-{spec[1]}"


# ======================================================================================== report

class Report:
    """The JSON document; ``save`` rewrites it atomically (after every section)."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.doc: dict[str, Any] = {"meta": meta, "sections": {}, "programs": {}, "errors": []}
        self.t0 = time.perf_counter()

    def section(self, name: str, data: dict) -> None:
        self.doc["sections"][name] = data
        self.save()

    def partial(self, name: str, rows: list) -> None:
        """The rows measured so far of a section still running (saved at once)."""
        self.doc["sections"][name] = {"rows": rows, "partial": True}
        self.save()

    def program(self, name: str, record: dict) -> None:
        self.doc["programs"][name] = record

    def error(self, where: str, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"
        self.doc["errors"].append({"where": where, "error": msg[:2000]})
        log(f"ERROR in {where}: {msg[:500]}")
        if os.environ.get("GPU_SUITE_TRACEBACK"):
            traceback.print_exc()

    def save(self) -> None:
        self.doc["meta"]["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=_json_default))
        os.replace(tmp, self.path)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[gpu_suite {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n**{title}**\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(_cell(c) for c in r) + " |")
    sys.stdout.flush()


def _cell(c) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        if not math.isfinite(c):
            return "-"
        return f"{c:.3g}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)


# ======================================================================================== device

def device_info(peak_override: float | None) -> dict:
    d = jax.devices()[0]
    kind = d.device_kind
    peak = peak_override * 1e12 if peak_override else next(
        (p for k, p in PEAK_BF16 if k in kind.lower()), None)
    return {"platform": d.platform, "device_kind": kind, "device_count": jax.device_count(),
            "peak_bf16_flops": peak, "peak_source": "--peak-tflops" if peak_override else
            ("table" if peak else "unknown (MFU not computed; give --peak-tflops)"),
            "policy_platform": policy_lib.platform_of(jax.devices()[:1])}


def peak_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory stats)
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def section_metrics(plan: Plan, progs: Programs) -> dict:
    """g) gohd-eval's metric networks, random weights, float32 HIGHEST: frames/s by batch."""
    from gohd_jax.models.arcface import iresnet100
    from gohd_jax.models.inception_fid import FIDInceptionV3
    from gohd_jax.models.syncnet_v2 import SyncNetV2

    sync = build(lambda: SyncNetV2(rngs=nnx.Rngs(0)))
    nets = {"syncnet_lip": (sync, "embed_lip", (5, 224, 224, 3)), "syncnet_audio": (sync, "embed_audio", (13, 20, 1)),
            "inception_v3": (build(lambda: FIDInceptionV3(rngs=nnx.Rngs(0))), "__call__", (299, 299, 3)),
            "arcface_r100": (build(lambda: iresnet100(rngs=nnx.Rngs(0))), "__call__", (112, 112, 3))}
    rng = np.random.default_rng(0)
    rows, out_rows = [], []
    for name, (model, method, shape) in nets.items():
        graph, state = nnx.split(model)
        fn = jax.jit(lambda st, x, g=graph, m=method: getattr(nnx.merge(g, st), m)(x))
        xs = {b: jnp.asarray(rng.uniform(0, 1, (b, *shape)).astype(np.float32)) for b in plan.metric_batches}
        compiled = progs.compile([(f"metrics/{name}_b{b}", fn, (state, xs[b])) for b in plan.metric_batches],
                                 "metrics")
        for b in plan.metric_batches:
            prog = f"metrics/{name}_b{b}"
            if prog not in compiled:
                continue
            try:
                t = time_calls(lambda c=compiled[prog], x=xs[b]: c(state, x), plan.min_time)
            except Exception as e:  # noqa: BLE001  (e.g. out of memory)
                progs.report.error(prog, e)
                continue
            row = {"network": name, "batch": b, "seconds_per_call": t, "frames_per_s": b / t,
                   "gflops_per_frame": ratio(progs.flops(prog), b * 1e9)}
            rows.append(row)
            progs.report.partial("metrics", rows)
            out_rows.append([name, b, row["frames_per_s"], 1000 * t / b, row["gflops_per_frame"],
                             progs.records[prog]["compile_s"]])
    table("g) gohd-eval metric networks (float32, HIGHEST)",
          ["network", "batch", "frames/s", "ms/frame", "GFLOPs/frame", "compile s"], out_rows)
    return {"rows": rows}


def cpu_device():
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


BUILD_S: dict[str, float] = {}  # seconds spent building each model class (random init on the host)


def build(ctor: Callable[[], nnx.Module]) -> nnx.Module:
    """``ctor()`` run on the host CPU with the classic threefry (parameter init only: fast there,
    and no device compiles), its state then put on the default device."""
    t0 = time.perf_counter()
    cpu = cpu_device()
    prev = bool(getattr(jax.config, "jax_threefry_partitionable", True))
    jax.config.update("jax_threefry_partitionable", False)
    try:
        if cpu is not None:
            with jax.default_device(cpu):
                model = ctor()
        else:
            model = ctor()
    finally:
        jax.config.update("jax_threefry_partitionable", prev)
    graph, state = nnx.split(model)
    state = jax.block_until_ready(jax.device_put(state, jax.devices()[0]))
    BUILD_S[type(model).__name__] = BUILD_S.get(type(model).__name__, 0.0) + time.perf_counter() - t0
    log(f"built {type(model).__name__} in {time.perf_counter() - t0:.1f} s")
    return nnx.merge(graph, state)


def cached(models: dict, name: str, ctor: Callable[[], nnx.Module]) -> nnx.Module:
    """``models[name]``, built (``build(ctor)``) the first time."""
    if name not in models:
        models[name] = build(ctor)
    return models[name]


def policy_aware(model: nnx.Module) -> int:
    """How many modules of ``model`` read a policy (0: the model ignores it so far)."""
    return sum(1 for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module) and hasattr(m, "policy"))


def n_params(model: nnx.Module, what=nnx.Param) -> int:
    """Parameters of ``model`` (``what=...``: every variable, e.g. the frozen VGG19 weights)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, what))))


# ======================================================================================== compile

def _flops(cost) -> float | None:
    if cost is None:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    try:
        f = float(cost.get("flops", float("nan")))
    except (AttributeError, TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


class Programs:
    """Lowers and compiles named programs ahead of time (in threads), keeps them and their
    analyses; the report's ``programs`` entries are written here."""

    def __init__(self, report: Report, workers: int):
        self.report, self.workers = report, max(1, workers)
        self.compiled: dict[str, Any] = {}
        self.records: dict[str, dict] = {}

    def compile(self, specs: list[tuple[str, Any, tuple]], section: str) -> dict[str, Any]:
        """``specs``: (name, jitted function, example args). Returns {name: Compiled} for those
        that compiled (failures are reported and left out)."""
        todo, lowered = [s for s in specs if s[0] not in self.compiled], {}
        for name, fn, args in todo:
            t0 = time.perf_counter()
            try:
                lowered[name] = fn.lower(*args)
            except Exception as e:  # noqa: BLE001
                self.report.error(f"lower {name}", e)
                continue
            self.records[name] = {"section": section, "lower_s": time.perf_counter() - t0}
        if lowered:
            log(f"{section}: compiling {len(lowered)} program(s) with {self.workers} worker(s): "
                f"{', '.join(lowered)}")
        t_all = time.perf_counter()

        def one(name):
            t0 = time.perf_counter()
            c = lowered[name].compile()
            return name, c, time.perf_counter() - t0

        results = []
        with ThreadPoolExecutor(self.workers) as ex:
            futures = {ex.submit(one, n): n for n in lowered}
            for fut, name in futures.items():
                try:
                    results.append(fut.result())
                except Exception as e:  # noqa: BLE001
                    self.report.error(f"compile {name}", e)
                    self.records.pop(name, None)
        for name, c, dt in results:
            rec = self.records[name]
            rec["compile_s"] = dt
            rec["flops"] = _flops(_safe(c.cost_analysis))
            rec["flops_lowered"] = _flops(_safe(lowered[name].cost_analysis))
            mem = _safe(c.memory_analysis)
            if mem is not None:
                for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                          "alias_size_in_bytes", "generated_code_size_in_bytes"):
                    rec[k] = int(getattr(mem, k, 0) or 0)
            rec["concurrent_compiles"] = min(self.workers, len(lowered))
            self.compiled[name] = c
            self.report.program(name, rec)
        if lowered:
            log(f"{section}: compiled in {time.perf_counter() - t_all:.1f} s")
        return {n: self.compiled[n] for n, _, _ in specs if n in self.compiled}

    def flops(self, name: str) -> float | None:
        rec = self.records.get(name, {})
        return rec.get("flops") or rec.get("flops_lowered")


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001  (an analysis the backend lacks)
        return None


class Installed:
    """Stands in for a ``jax.jit`` inside a sampler object: calls the ahead-of-time compiled
    program whose argument shapes match, else the original jit (and counts the miss)."""

    def __init__(self, jitted):
        self.jitted, self.by_shape, self.misses = jitted, {}, 0

    @staticmethod
    def key(args) -> tuple:
        return tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x))))
                     for x in jax.tree.leaves(args[1:]))  # args[0]: the model state, always the same

    def add(self, args, compiled) -> None:
        self.by_shape[self.key(args)] = compiled

    def __call__(self, *args):
        c = self.by_shape.get(self.key(args))
        if c is not None:
            try:
                return c(*args)
            except (TypeError, ValueError):
                pass
        self.misses += 1
        return self.jitted(*args)

    def _cache_size(self) -> int:
        return len(self.by_shape) + self.jitted._cache_size()


def install(obj, attr: str = "_fn") -> Installed:
    fn = getattr(obj, attr)
    if not isinstance(fn, Installed):
        fn = Installed(fn)
        setattr(obj, attr, fn)
    return fn


# ======================================================================================== timing

def time_calls(call: Callable[[], Any], min_time: float, min_reps: int = 3, max_reps: int = 1000) -> float:
    """Seconds per call of ``call`` (already compiled): one blocked warm call, one timed call to
    size the run, then n calls dispatched back to back and blocked once (throughput)."""
    jax.block_until_ready(call())
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    one = max(time.perf_counter() - t0, 1e-6)
    n = int(min(max_reps, max(min_reps, math.ceil(min_time / one))))
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = call()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def ratio(num, den):
    return num / den if num is not None and den else None


# ======================================================================================== a) render

def has_directions_kw() -> bool:
    """Whether ``SemanticAnimator.render`` takes ``directions=Q`` (else it computes Q per call)."""
    return "directions" in inspect.signature(SemanticAnimator.render).parameters


def render_fns(model: SemanticAnimator):
    graph, _ = nnx.split(model)
    kw_directions = has_directions_kw()

    @jax.jit
    def encode(state, src):
        return nnx.merge(graph, state).encode_source(src)

    @jax.jit
    def directions(state):
        return nnx.merge(graph, state).directions().astype(jnp.float32)

    @jax.jit
    def render(state, q, w_s, feats, semantics):
        m = nnx.merge(graph, state)
        out = m.render(w_s, feats, semantics, directions=q) if kw_directions else m.render(w_s, feats, semantics)
        return quantise(out["rgb"][0])

    return encode, directions, render, kw_directions


def section_render(plan: Plan, progs: Programs, info: dict, models: dict) -> dict:
    cfg = plan.animator
    anim = cached(models, "animator", lambda: SemanticAnimator(cfg, rngs=nnx.Rngs(0)))
    plat = info["policy_platform"]
    rng = np.random.default_rng(0)
    src = jnp.asarray(rng.uniform(-1, 1, (1, cfg.size, cfg.size, 3)).astype(np.float32))
    sems = {b: jnp.asarray(rng.normal(0, 0.1, (b, cfg.window, cfg.semantic_dim)).astype(np.float32))
            for b in plan.render_batches}
    rows, out_rows = [], []
    for dtype in ("float32", "bfloat16"):
        view = policy_lib.with_policy(anim, policy_lib.Policy(compute=dtype, platform=plat))
        state = nnx.state(view)
        encode, directions, render, kw = render_fns(view)
        q = directions(state)
        w_s, feats = jax.eval_shape(encode, state, src)
        specs = [(f"render/encode_{dtype}_b1", encode, (state, src))]
        specs += [(f"render/render_{dtype}_b{b}", render, (state, q, w_s, feats, sems[b]))
                  for b in plan.render_batches]
        compiled = progs.compile(specs, "render")
        enc = compiled.get(f"render/encode_{dtype}_b1")
        if enc is None:
            continue
        w_s, feats = enc(state, src)
        t_enc = time_calls(lambda: enc(state, src), plan.min_time)
        for b in plan.render_batches:
            name = f"render/render_{dtype}_b{b}"
            if name not in compiled:
                continue
            try:
                t = time_calls(lambda c=compiled[name], s=sems[b]: c(state, q, w_s, feats, s), plan.min_time)
            except Exception as e:  # noqa: BLE001  (e.g. out of memory at batch 256)
                progs.report.error(name, e)
                continue
            flops = progs.flops(name)
            tflops = ratio(flops, t)
            row = {"precision": dtype, "batch": b, "seconds_per_call": t, "frames_per_s": b / t,
                   "ms_per_frame": 1000 * t / b, "gflops_per_frame": ratio(flops, b * 1e9),
                   "tflops_per_s": tflops / 1e12 if tflops else None,
                   "mfu_vs_bf16_peak": ratio(tflops, info["peak_bf16_flops"]),
                   "encode_source_s": t_enc, "directions_kw": kw,
                   "policy_aware_modules": policy_aware(view)}
            rows.append(row)
            progs.report.partial("render", rows)
            out_rows.append([dtype, b, row["frames_per_s"], row["ms_per_frame"], row["gflops_per_frame"],
                             row["tflops_per_s"], _pct(row["mfu_vs_bf16_peak"]), t_enc * 1000,
                             progs.records[name]["compile_s"]])
    table(f"a) render frames/s, {cfg.size} px animator, source encoded once, Q computed once",
          ["precision", "batch", "frames/s", "ms/frame", "GFLOPs/frame", "TFLOP/s", "% bf16 peak",
           "encode source (ms)", "compile s"], out_rows)
    return {"rows": rows, "animator_params": n_params(anim), "image_size": cfg.size}


def _pct(x):
    return None if x is None else 100 * x


# ======================================================================================== b) e2e / e) latency

class Pipeline:
    """The inference pieces under one policy: the animator's encode and render, the pose and
    gaze window samplers per sampler spec, the expression windows. Mirrors
    ``gohd_jax.infer.animate.Animate`` (drive + render_frames) without the audio front end and
    the mp4 writers."""

    def __init__(self, plan: Plan, models: dict, policy: policy_lib.Policy, progs: Programs):
        self.plan, self.policy, self.progs = plan, policy, progs
        anim = cached(models, "animator", lambda: SemanticAnimator(plan.animator, rngs=nnx.Rngs(0)))
        pose = cached(models, "pose", lambda: MotionDenoiser(plan.pose, rngs=nnx.Rngs(1)))
        gaze = cached(models, "gaze", lambda: MotionDenoiser(plan.gaze, rngs=nnx.Rngs(2)))
        cls = TwoStageExpression if plan.two_stage else FrameExpression
        expr = cached(models, "expression", lambda: cls(plan.expression, rngs=nnx.Rngs(3)))
        self.anim = policy_lib.with_policy(anim, policy)
        self.pose, self.gaze = policy_lib.with_policy(pose, policy), policy_lib.with_policy(gaze, policy)
        self.expr = ExpressionWindows(policy_lib.with_policy(expr, policy), window=plan.expression_window)
        self.expr_fn = install(self.expr)
        self.anim_state = nnx.state(self.anim)
        graph = nnx.split(self.anim)[0]
        kw = has_directions_kw()

        @jax.jit
        def encode(state, src):
            return nnx.merge(graph, state).encode_source(src.astype(jnp.float32) / 127.5 - 1.0)

        @jax.jit
        def render(state, q, w_s, feats, semantics):
            m = nnx.merge(graph, state)
            out = m.render(w_s, feats, semantics, directions=q) if kw else m.render(w_s, feats, semantics)
            return quantise(out["rgb"][0])

        self.encode_fn, self.render_fn = encode, render
        self.q = jax.jit(lambda s: nnx.merge(graph, s).directions().astype(jnp.float32))(self.anim_state)
        self.samplers: dict[tuple[str, int], tuple] = {}
        for spec in plan.samplers:
            s = samplers.SamplerSpec(spec[0], spec[1])
            ws = tuple(windowing.WindowSampler(m, spec=s, residual=res, alignment=plan.alignment)
                       for m, res in ((self.pose, True), (self.gaze, False)))
            self.samplers[spec] = ws + tuple(install(w) for w in ws)

    # ---- inputs
    def inputs(self, clips: int, seconds: float, seed: int = 0) -> dict:
        p, cfg = self.plan, self.plan.animator
        t = int(round(seconds * FPS))
        rng = np.random.default_rng(seed)
        f32 = np.float32
        return {
            "frames": t,
            "sources": rng.integers(0, 256, (clips, cfg.size, cfg.size, 3), dtype=np.uint8),
            "mel": rng.normal(0, 1, (clips, t, 80, 16)).astype(f32),
            "cond": rng.normal(0, 1, (clips, t, p.pose.local_dim)).astype(f32),
            "exp0": rng.normal(0, 0.1, (clips, p.expression.exp_dim)).astype(f32),
            "pose0": rng.normal(0, 0.05, (clips, 6)).astype(f32),
            "gaze0": rng.normal(0, 0.05, (clips, 2)).astype(f32),
            "control0": rng.uniform(0, 0.3, (clips, p.expression.control_dim)).astype(f32),
            "keys": [jax.random.key(seed + i) for i in range(clips)],
        }

    @staticmethod
    def part(inp, i):
        return jnp.stack([jax.random.fold_in(k, i) for k in inp["keys"]])

    # ---- ahead-of-time compiles for a batch of `clips`
    def compile(self, clips: int, section: str) -> dict:
        p, b = self.plan, clips
        f32 = jnp.float32
        specs, installs = [], []
        # expression window: the first call's argument structure (ExpressionWindows.iter_windows)
        exp0 = jnp.zeros((b, p.expression.exp_dim), f32)
        audio = jnp.zeros((b, p.expression_window, 80, 16), f32)
        eye = jnp.full((b, p.expression_window), jnp.nan, f32)  # the eye control: generated everywhere
        if self.expr.two_stage:
            keys = jnp.stack([jax.random.key(i) for i in range(b)])
            k = jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(keys)
            ctrl = jnp.zeros((b, p.expression.control_dim), f32)
        else:
            k, ctrl = None, None
        args = (self.expr.state, audio, exp0, ctrl, k, eye)
        specs.append((f"pipeline/expression_b{b}", self.expr_fn.jitted, args))
        installs.append((self.expr_fn, args, specs[-1][0]))
        # motion windows (WindowSampler.__call__ / iter_windows)
        n = p.motion_window - (1 if p.alignment == "release" else 0)
        keys = jnp.stack([jax.random.key(i) for i in range(b)])
        wkey = jax.vmap(lambda kk: jax.random.fold_in(kk, 0))(keys)
        for spec, (pws, gws, pfn, gfn) in self.samplers.items():
            for what, ws, fn, c in (("pose", pws, pfn, 6), ("gaze", gws, gfn, 2)):
                args = (ws.state, jnp.zeros((b, n, p.pose.local_dim), f32), jnp.zeros((b, c), f32), wkey)
                name = f"pipeline/{what}_{spec[0]}{spec[1]}_b{b}"
                specs.append((name, fn.jitted, args))
                installs.append((fn, args, name))
        # animator: encode the clips' sources, render `render_batch` gathered rows
        src = jnp.zeros((b, p.animator.size, p.animator.size, 3), jnp.uint8)
        specs.append((f"pipeline/encode_b{b}", self.encode_fn, (self.anim_state, src)))
        w_s, feats = jax.eval_shape(self.encode_fn, self.anim_state, src)
        r = p.render_batch
        rows = lambda x: jax.ShapeDtypeStruct((r,) + x.shape[1:], x.dtype)  # noqa: E731
        sem = jax.ShapeDtypeStruct((r, p.animator.window, p.animator.semantic_dim), f32)
        specs.append((f"pipeline/render_b{r}", self.render_fn,
                      (self.anim_state, self.q, rows(w_s), jax.tree.map(rows, feats), sem)))
        compiled = self.progs.compile(specs, section)
        for fn, args, name in installs:
            if name in compiled:
                fn.add(args, compiled[name])
        return {"encode": compiled.get(f"pipeline/encode_b{b}", self.encode_fn),
                "render": compiled.get(f"pipeline/render_b{r}", self.render_fn)}

    # ---- one run (mirrors Animate.drive + render_frames)
    def run(self, spec, inp, fns) -> dict:
        p = self.plan
        b, t = inp["sources"].shape[0], inp["frames"]
        pws, gws = self.samplers[spec][:2]
        times: dict[str, float] = {}
        start = time.perf_counter()

        t0 = time.perf_counter()
        exp = np.empty((b, t, p.expression.exp_dim), np.float32)
        ctrl_in = inp["control0"] if self.expr.two_stage else None
        for s, e, _ in self.expr.iter_windows(inp["mel"], inp["exp0"], controls=ctrl_in,
                                              key=self.part(inp, 2), hold_blink=np.zeros(b, bool)):
            exp[:, s:s + e.shape[1]] = e
        times["expression"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        pose = windowing.generate_long(pws, inp["cond"], inp["pose0"], key=self.part(inp, 0), window=p.motion_window)
        gaze = windowing.generate_long(gws, inp["cond"], inp["gaze0"], key=self.part(inp, 1), window=p.motion_window)
        times["motion"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        desc = np.concatenate([exp, moving_average(pose), gaze], axis=-1).astype(np.float32)  # [B,T,72]
        times["descriptors"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        w_s, feats = fns["encode"](self.anim_state, jnp.asarray(inp["sources"]))
        jax.block_until_ready(w_s)
        order = [(i, f) for f in range(t) for i in range(b)]
        r = p.render_batch
        first = None
        offsets = np.arange(-RADIUS, RADIUS + 1)
        frames_out = 0
        for b0 in range(0, len(order), r):
            chunk = order[b0:b0 + r]
            rows = chunk + [chunk[-1]] * (r - len(chunk))
            clip_idx = np.array([i for i, _ in rows])
            frame_idx = np.array([f for _, f in rows])
            sem = desc[clip_idx[:, None], np.clip(frame_idx[:, None] + offsets[None], 0, t - 1)]
            frames = fns["render"](self.anim_state, self.q, w_s[clip_idx], tuple(x[clip_idx] for x in feats),
                                   jnp.asarray(sem))
            frames = np.asarray(frames)[:len(chunk)]
            frames_out += len(frames)
            if first is None:
                first = time.perf_counter() - start
        times["render"] = time.perf_counter() - t0
        total = time.perf_counter() - start
        return {"sampler": sampler_name(spec), "clips": b, "frames": frames_out, "audio_s": t / FPS,
                "total_s": total, "frames_per_s": frames_out / total, "first_frame_s": first,
                "real_time_factor": total / (t / FPS), "stages_s": times}

    def misses(self) -> int:
        fns = [self.expr_fn] + [f for v in self.samplers.values() for f in v[2:]]
        return sum(f.misses for f in fns)


def moving_average(x: np.ndarray, k: int = 5) -> np.ndarray:
    """Centred k-frame moving average along axis 1 of [B,T,C] (the engine's pose smoothing)."""
    t = x.shape[1]
    if t < 2:
        return x
    r = k // 2
    c = np.cumsum(np.concatenate([np.zeros_like(x[:, :1]), x], axis=1), axis=1)
    lo = np.clip(np.arange(t) - r, 0, t)
    hi = np.clip(np.arange(t) + r + 1, 0, t)
    return ((c[:, hi] - c[:, lo]) / (hi - lo)[None, :, None]).astype(np.float32)


def get_pipeline(plan: Plan, models: dict, progs: Programs, info: dict, precision: str) -> Pipeline:
    key = ("pipeline", precision)
    if key not in models:
        policy = policy_lib.resolve(precision, platform=info["policy_platform"])
        models[key] = Pipeline(plan, models, policy, progs)
    return models[key]


def section_e2e(plan: Plan, progs: Programs, info: dict, models: dict, precision: str) -> dict:
    pipe = get_pipeline(plan, models, progs, info, precision)
    fns = pipe.compile(plan.clips, "e2e")
    inp = pipe.inputs(plan.clips, plan.seconds)
    rows, out = [], []
    for spec in plan.samplers:
        try:
            t0 = time.perf_counter()
            pipe.run(spec, inp, fns)  # warm-up: first calls, any fallback compile
            warm = time.perf_counter() - t0
            row = pipe.run(spec, inp, fns)
        except Exception as e:  # noqa: BLE001
            progs.report.error(f"e2e {sampler_name(spec)}", e)
            continue
        row["warmup_run_s"] = warm
        rows.append(row)
        progs.report.partial("e2e", rows)
        st = row["stages_s"]
        out.append([row["sampler"], row["clips"], row["frames"], row["total_s"], row["frames_per_s"],
                    row["first_frame_s"], st["expression"], st["motion"], st["descriptors"], st["render"], warm])
    table(f"b) end to end, {plan.clips} clips x {plan.seconds:g} s, {pipe.policy.compute}, render batch "
          f"{plan.render_batch} (seconds)",
          ["sampler", "clips", "frames", "total s", "frames/s", "first frame s", "expression", "motion",
           "descriptors", "render", "warm-up run s"], out)
    return {"rows": rows, "precision": pipe.policy.compute, "render_batch": plan.render_batch,
            "expression_model": "two_stage" if plan.two_stage else "released",
            "motion_window": plan.motion_window, "alignment": plan.alignment,
            "expression_window": plan.expression_window, "aot_misses": pipe.misses()}


def section_latency(plan: Plan, progs: Programs, info: dict, models: dict, precision: str) -> dict:
    pipe = get_pipeline(plan, models, progs, info, precision)
    fns = pipe.compile(1, "latency")
    inp = pipe.inputs(1, plan.latency_seconds, seed=100)
    rows, out = [], []
    for spec in plan.samplers:
        try:
            pipe.run(spec, inp, fns)
            row = pipe.run(spec, inp, fns)
        except Exception as e:  # noqa: BLE001
            progs.report.error(f"latency {sampler_name(spec)}", e)
            continue
        rows.append(row)
        progs.report.partial("latency", rows)
        st = row["stages_s"]
        out.append([row["sampler"], row["audio_s"], row["first_frame_s"], row["total_s"], row["real_time_factor"],
                    row["frames_per_s"], st["expression"], st["motion"], st["render"]])
    table(f"e) one {plan.latency_seconds:g} s clip at batch 1, {pipe.policy.compute}, render batch {plan.render_batch}",
          ["sampler", "audio s", "first frame s", "total s", "real-time factor (wall / audio)", "frames/s",
           "expression s", "motion s", "render s"], out)
    return {"rows": rows, "precision": pipe.policy.compute, "aot_misses": pipe.misses()}


# ======================================================================================== c) animator train step

def init_state(models: dict[str, nnx.Module], optimizers: dict, ema_models: tuple[str, ...],
               ema_decay: float, seed: int = 0) -> TrainState:
    """``Trainer._init`` for already built models (params / rest split, optimizer state, EMA)."""
    params, rest = {}, {}
    for name, model in models.items():
        _, params[name], rest[name] = nnx.split(model, nnx.Param, ...)
    opt = jax.jit(lambda p: {n: tx.init(p[n]) for n, tx in optimizers.items()})(params)
    ema = {n: jax.tree.map(lambda x: x.copy(), params[n]) for n in ema_models} if ema_decay > 0 else {}
    key = jax.random.key(seed)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt=opt, ema=ema,
                      rng=jax.random.key_data(jax.random.fold_in(key, 1)))


class TaskConfig(dict):
    """What a task reads of its ``ml_collections.ConfigDict`` (attributes, items, ``.get``), from
    plain dicts: the GPU image has no ml_collections."""

    def __init__(self, d: dict):
        super().__init__({k: TaskConfig(v) if isinstance(v, dict) else v for k, v in d.items()})

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def task_step(task, ctx: StepContext, ema_decay: float, ema_warmup: bool = True) -> Callable:
    """The trainer's step (``state.step_with_ema``) around the task's own ``train_step``."""
    return lambda state, batch: step_with_ema(lambda s, b, k: task.train_step(ctx, s, b, k), state,
                                              batch, ema_decay, ema_warmup)


def animator_task(h: dict):
    """``AnimatorTask`` with ``h``'s learning rates, loss weights and GAN start (the models are
    built here, with random weights and a random VGG19, not by the task)."""
    from gohd_jax.train.tasks.animator import AnimatorTask

    task = {k: h[k] for k in ("g_lr", "d_lr", "g_beta2", "d_beta2", "loss", "gan_start_step")}
    return AnimatorTask(TaskConfig({"task": {**task, "model": {"preset": "official"}, "vgg19_weights": ""}}))


def animator_optimizers(h: dict) -> dict:
    return animator_task(h).optimizers()


def animator_models(cfg: AnimatorConfig, perceptual: str, seed: int = 0) -> dict[str, nnx.Module]:
    """``AnimatorTask.create_models`` with random weights (a random frozen VGG19 for the pyramid)."""
    models = {"generator": build(lambda: SemanticAnimator(cfg, rngs=nnx.Rngs(seed))),
              "discriminator": build(lambda: Discriminator(cfg.size, channels=cfg.channel_map(),
                                                           rngs=nnx.Rngs(seed + 1)))}
    if perceptual == "vgg":
        from gohd_jax.models.vgg19 import VGG19Features
        models["vgg"] = build(lambda: VGG19Features(rngs=nnx.Rngs(seed + 2)))
    return models


def make_animator_step(models: dict, policy: policy_lib.Policy, hyper: dict = ANIMATOR_OFFICIAL):
    """(jitted step with the state donated, StepContext) for ``models`` under ``policy``."""
    views = {n: policy_lib.with_policy(m, policy) for n, m in models.items()}
    task = animator_task(hyper)
    ctx = StepContext(graphdefs={n: nnx.split(m)[0] for n, m in views.items()},
                      optimizers=task.optimizers())
    step = task_step(task, ctx, hyper["ema_decay"], hyper.get("ema_warmup", True))
    return jax.jit(step, donate_argnums=0), ctx


def animator_batch(b: int, size: int, seed: int = 0, mouth: bool = False) -> dict:
    """A random animator batch; ``mouth`` adds a ``mouth_box`` (for a config with ``loss.mouth``)."""
    rng = np.random.default_rng(seed)
    batch = {"source": jnp.asarray(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)),
             "target": jnp.asarray(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)),
             "descriptor_window": jnp.asarray(rng.normal(0, 0.1, (b, 27, 72)).astype(np.float32))}
    if mouth:
        box = np.asarray([size * 5 // 8, size * 7 // 8, size * 3 // 8, size * 5 // 8], np.int32)
        batch["mouth_box"] = jnp.asarray(np.tile(box, (b, 1)))
    return batch


def run_steps(compiled, state, batch, n: int, min_time: float):
    """(seconds per step, state): warm-up steps, then at least ``n`` steps / ``min_time`` seconds."""
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    reps = n
    if min_time > 0:
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        one = max(time.perf_counter() - t0, 1e-6)
        reps = int(max(n, min(200, math.ceil(min_time / one))))
    t0 = time.perf_counter()
    for _ in range(reps):
        state, m = compiled(state, batch)
    jax.block_until_ready(m)
    host = jax.device_get(m)
    return (time.perf_counter() - t0) / reps, state, {k: float(v) for k, v in host.items()}


def train_rows(progs: Programs, info: dict, section: str, make: Callable, fresh_state: Callable, batches: dict,
               remats: list[str], min_steps: int, min_time: float, per_example: str):
    """Compiles and times (batch x remat) train programs; MFU uses the remat-none FLOPs.
    ``fresh_state()`` makes the initial state (again after a failed row: its state was donated)."""
    state = fresh_state()
    specs = []
    for b, batch in batches.items():
        for remat in remats:
            specs.append((f"{section}/b{b}_remat_{remat}", make(remat), (state, batch)))
    compiled = progs.compile(specs, section)
    rows, out = [], []
    for b, batch in batches.items():
        useful = progs.flops(f"{section}/b{b}_remat_none")
        for remat in remats:
            name = f"{section}/b{b}_remat_{remat}"
            if name not in compiled:
                continue
            try:
                t, state, metrics = run_steps(compiled[name], state, batch, min_steps, min_time)
            except Exception as e:  # noqa: BLE001  (e.g. out of memory)
                progs.report.error(name, e)
                state = fresh_state()  # the donated state may be gone
                continue
            own = progs.flops(name)
            peak = info["peak_bf16_flops"]
            row = {"batch": b, "remat": remat, "seconds_per_step": t, "steps_per_s": 1 / t,
                   f"{per_example}_per_s": b / t, "tflops_per_step": ratio(own, 1e12),
                   "model_tflops_per_step": ratio(useful, 1e12),
                   "mfu": ratio(ratio(useful, t), peak), "hfu": ratio(ratio(own, t), peak),
                   "compile_s": progs.records[name]["compile_s"],
                   "temp_bytes": progs.records[name].get("temp_size_in_bytes"),
                   "finite_losses": all(math.isfinite(v) for k, v in metrics.items() if k.startswith("loss"))}
            rows.append(row)
            progs.report.partial(section, rows)
            out.append([b, remat, row["steps_per_s"], row[f"{per_example}_per_s"], row["model_tflops_per_step"],
                        _pct(row["mfu"]), _pct(row["hfu"]), _gib(row["temp_bytes"]), row["compile_s"]])
    return rows, out, state


def _gib(x):
    return None if x is None else x / 2 ** 30


def section_train_animator(plan: Plan, progs: Programs, info: dict) -> dict:
    cfg = plan.train_animator
    models = animator_models(cfg, plan.perceptual)
    hyper = dict(ANIMATOR_OFFICIAL)
    fresh = lambda: init_state(models, animator_optimizers(hyper), ("generator",), hyper["ema_decay"])  # noqa: E731
    plat = info["policy_platform"]
    ctx_of: dict[str, Any] = {}

    def make(remat):
        if remat not in ctx_of:
            ctx_of[remat] = make_animator_step(models, policy_lib.Policy(compute="bfloat16", remat=remat,
                                                                         platform=plat), hyper)[0]
        return ctx_of[remat]

    batches = {b: animator_batch(b, cfg.size, seed=b) for b in plan.train_batches}
    rows, out, _ = train_rows(progs, info, "train_animator", make, fresh, batches, plan.remats,
                              plan.train_min_steps, plan.min_time, "examples")
    table(f"c) animator GAN train step, {cfg.size} px, bfloat16, perceptual {plan.perceptual}",
          ["batch", "remat", "steps/s", "examples/s", "model TFLOPs/step", "MFU %", "HFU %", "temp GiB",
           "compile s"], out)
    return {"rows": rows, "params": {n: n_params(m) for n, m in models.items()},
            "frozen_weights": {n: n_params(m, ...) - n_params(m) for n, m in models.items()},
            "perceptual": plan.perceptual, "policy_aware_modules": views_policy_aware(models), "hyper": hyper}


def views_policy_aware(models: dict) -> dict:
    return {n: policy_aware(policy_lib.with_policy(m, policy_lib.Policy(compute="bfloat16")))
            for n, m in models.items()}


# ======================================================================================== d) denoiser train step

def denoiser_task(h: dict):
    """``MotionDiffusionTask`` for the pose target as configs/motion.py:pose sets it (no clipping,
    no condition dropout, data_scale 1)."""
    from gohd_jax.train.tasks.motion_diffusion import MotionDiffusionTask

    return MotionDiffusionTask(TaskConfig({"task": {
        "target": "pose", "learning_rate": h["learning_rate"], "grad_clip": 0.0, "cond_dropout": 0.0,
        "data_scale": 1.0, "model": {"preset": "official"}}}))


def section_train_denoiser(plan: Plan, progs: Programs, info: dict, models: dict) -> dict:
    cfg = plan.pose
    model = cached(models, "pose", lambda: MotionDenoiser(cfg, rngs=nnx.Rngs(1)))
    h = DENOISER_OFFICIAL
    opts = denoiser_task(h).optimizers()
    fresh = lambda: init_state({"denoiser": model}, opts, ("denoiser",), h["ema_decay"])  # noqa: E731
    plat = info["policy_platform"]
    made: dict[str, Any] = {}

    def make(remat):
        if remat not in made:
            view = policy_lib.with_policy(model, policy_lib.Policy(compute="bfloat16", remat=remat, platform=plat))
            ctx = StepContext(graphdefs={"denoiser": nnx.split(view)[0]}, optimizers=opts)
            made[remat] = jax.jit(task_step(denoiser_task(h), ctx, h["ema_decay"], h.get("ema_warmup", True)),
                                  donate_argnums=0)
        return made[remat]

    b, w = plan.denoiser_batch, plan.denoiser_window
    rng = np.random.default_rng(0)
    batch = {"pose": jnp.asarray(rng.normal(0, 0.1, (b, w, cfg.in_channels)).astype(np.float32)),
             "pose0": jnp.asarray(rng.normal(0, 0.1, (b, cfg.global_dim)).astype(np.float32)),
             "cond": jnp.asarray(rng.normal(0, 1, (b, w, cfg.local_dim)).astype(np.float32))}
    remats = plan.denoiser_remats if "none" in plan.denoiser_remats else ["none"] + plan.denoiser_remats
    rows, out, _ = train_rows(progs, info, "train_denoiser", make, fresh, {b: batch}, remats,
                              plan.train_min_steps, plan.min_time, "windows")
    table(f"d) pose denoiser train step ({n_params(model) / 1e6:.1f} M params), {w}-frame windows, bfloat16",
          ["batch", "remat", "steps/s", "windows/s", "model TFLOPs/step", "MFU %", "HFU %", "temp GiB",
           "compile s"], out)
    return {"rows": rows, "params": n_params(model), "window": w,
            "policy_aware_modules": policy_aware(policy_lib.with_policy(model, policy_lib.Policy(compute="bfloat16")))}


# ======================================================================================== f) memory

def section_memory(report: Report) -> dict:
    progs = report.doc["programs"]
    rows = []
    for name, r in progs.items():
        rows.append([name, r.get("lower_s"), r.get("compile_s"), ratio(r.get("flops"), 1e9),
                     _gib(r.get("argument_size_in_bytes")), _gib(r.get("output_size_in_bytes")),
                     _gib(r.get("temp_size_in_bytes"))])
    table("f) compiled programs: compile time, XLA FLOPs and memory (GiB)",
          ["program", "lower s", "compile s", "GFLOPs", "arguments", "outputs", "temporaries"], rows)
    peaks = {n: s.get("peak_bytes_in_use") for n, s in report.doc["sections"].items()}
    table("f) device peak_bytes_in_use after each section (cumulative; - where the backend has none)",
          ["section", "GiB"], [[n, _gib(v)] for n, v in peaks.items()])
    total_compile = sum(r.get("compile_s", 0.0) for r in progs.values())
    return {"programs": len(progs), "compile_s_sum": total_compile, "peak_bytes_in_use": peak_bytes(),
            "peak_bytes_after_section": peaks,
            "largest_temp_program": max(progs, key=lambda n: progs[n].get("temp_size_in_bytes", 0), default=None)}


# ======================================================================================== main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models, small batches, 1 s clips (CPU check)")
    p.add_argument("--out", default="gpu_suite.json", help="JSON file, rewritten after every section")
    p.add_argument("--sections", default="a,b,c,d,e,f",
                   help="letters or names: a render, b e2e, c train_animator, d train_denoiser, e latency, f memory")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak TFLOP/s (default: by device kind)")
    p.add_argument("--compile-workers", type=int, default=None,
                   help="threads compiling in parallel (default: min(6, cpus // 2), at least 1)")
    p.add_argument("--min-time", type=float, default=None, help="seconds each timing runs at least (1; smoke 0)")
    p.add_argument("--render-batches", default=None, help="a) batches (default 1,8,64,256; smoke 2)")
    p.add_argument("--metric-batches", default=None, help="g) batches (default 1,32,128; smoke 1)")
    p.add_argument("--clips", type=int, default=None, help="b) clips (default 16)")
    p.add_argument("--seconds", type=float, default=None, help="b) seconds per clip (default 10)")
    p.add_argument("--render-batch", type=int, default=None, help="b, e) frames per render call (default 64)")
    p.add_argument("--samplers", default="ddim25,ddpm150", help="b, e) samplers: ddimN, ddpm150")
    p.add_argument("--precision", default="auto", choices=policy_lib.PRECISIONS,
                   help="b, e) inference precision (auto: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--expression", default="two_stage", choices=("two_stage", "released"),
                   help="b, e) expression model: stage 1 + the LSTM stage 2, or the released stage 1")
    p.add_argument("--latency-seconds", type=float, default=None, help="e) clip length (default 10)")
    p.add_argument("--train-batches", default=None, help="c) batches (default 8,16,32; smoke 1)")
    p.add_argument("--remats", default=None, help="c) remat policies (default none,blocks; smoke none)")
    p.add_argument("--perceptual", default="vgg", choices=("vgg", "ms_ssim"),
                   help="c) VGG19 pyramid (random frozen VGG19) or MS-SSIM + gradient")
    p.add_argument("--train-steps", type=int, default=None,
                   help="c, d) timed steps at least, after one warm-up step (default 5; smoke 1)")
    p.add_argument("--denoiser-batch", type=int, default=None, help="d) batch (default 8)")
    p.add_argument("--denoiser-remats", default="none", help="d) remat policies")
    p.add_argument("--cache-dir", default=None, help="JAX persistent compilation cache (off by default: "
                   "compile times would read as cache hits)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    wanted = []
    for s in strs(a.sections):
        name = SECTIONS.get(s, s)
        if name not in SECTIONS.values():
            raise SystemExit(f"unknown section {s!r}: choose from {', '.join(f'{k} {v}' for k, v in SECTIONS.items())}")
        wanted.append(name)
    if a.cache_dir:
        jax.config.update("jax_compilation_cache_dir", a.cache_dir)
    plan = make_plan(a)
    info = device_info(a.peak_tflops)
    workers = a.compile_workers or max(1, min(6, (os.cpu_count() or 2) // 2))
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "flax": getattr(nnx, "__version__", None) or _version("flax"),
            "jaxlib": _version("jaxlib"), "smoke": plan.smoke, "argv": sys.argv[1:] if argv is None else argv,
            "compile_workers": workers, "sections": wanted, **info}
    report = Report(Path(a.out), meta)
    report.save()
    log(f"{info['device_kind']} ({info['platform']}), jax {jax.__version__}, peak bf16 {_tf(info['peak_bf16_flops'])} "
        f"TFLOP/s, sections {', '.join(wanted)}, {'smoke' if plan.smoke else 'official'} sizes")
    print(f"GPU suite, {meta['date']}: {info['device_kind']} x{info['device_count']} ({info['platform']}), "
          f"jax {jax.__version__}, {'tiny (smoke)' if plan.smoke else 'official'} sizes, random weights; "
          f"peak bf16 {_tf(info['peak_bf16_flops'])} TFLOP/s ({info['peak_source']})")
    progs = Programs(report, workers)
    models: dict = {}
    # cheap and inference sections first: a run cut short loses the least
    order = ["render", "e2e", "latency", "metrics", "train_denoiser", "train_animator", "memory"]
    for name in [n for n in order if n in wanted]:
        t0 = time.perf_counter()
        log(f"section {name} ...")
        try:
            if name == "render":
                data = section_render(plan, progs, info, models)
            elif name == "e2e":
                data = section_e2e(plan, progs, info, models, a.precision)
            elif name == "latency":
                data = section_latency(plan, progs, info, models, a.precision)
            elif name == "metrics":
                data = section_metrics(plan, progs)
            elif name == "train_animator":
                models.clear()  # the inference models, views and states are not needed any more
                data = section_train_animator(plan, progs, info)
            elif name == "train_denoiser":
                for k in [k for k in models if k != "pose"]:
                    del models[k]
                data = section_train_denoiser(plan, progs, info, models)
            else:
                data = section_memory(report)
        except Exception as e:  # noqa: BLE001  (a section that fails leaves the others)
            report.error(f"section {name}", e)
            data = {"rows": [], "failed": f"{type(e).__name__}: {e}"[:2000]}
        data["seconds"] = time.perf_counter() - t0
        report.doc["meta"]["model_build_s"] = dict(BUILD_S)
        data.setdefault("peak_bytes_in_use", peak_bytes())
        report.section(name, data)
        log(f"section {name}: {data['seconds']:.1f} s; JSON written to {a.out}")
    report.save()
    log(f"done in {time.perf_counter() - _T0:.1f} s, {len(report.doc['errors'])} error(s)")
    return 1 if report.doc["errors"] else 0


def _tf(x):
    return "?" if not x else f"{x / 1e12:.0f}"


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
