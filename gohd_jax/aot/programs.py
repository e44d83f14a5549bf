"""The programs ``gohd-aot`` compiles for a stage, built from its config and a compile target.

* ``train``: the stage's real jitted train step (``Trainer``'s mesh from ``config.mesh``,
  parameter shardings from ``config.sharding_rules``, donated state, the precision policy of the
  target's platform), lowered for the abstract state and the abstract global batch
  (``batches.train_batch_spec``).
* inference, data-parallel over every chip (batch split, parameters replicated), the same
  functions ``gohd animate`` jits (``infer/animate.py``, ``diffusion/windowing.py``,
  ``infer/expression.py``) with the shapes ``gohd export`` uses:

  - ``encode`` (animator): source uint8 [B,S,S,3] -> (w_s, features), B = clips;
  - ``render`` (animator): (w_s, features, semantics [R,27,72]) -> uint8 frames [R,S,S,3],
    R = ``render_batch`` frames per chip x chips;
  - ``motion_ddpm150`` / ``motion_ddim25`` (motion): one pose or gaze window (the config's
    ``data.window`` frames, training alignment) through the whole sampler chain, one key per clip;
  - ``expression`` (expression stage 1 or 2): one expression window (``data.window`` frames).

  The models are the task's own (``task.create_models``) with the inference policy (the config's
  precision for the target platform, no remat) and abstract parameters: nothing is initialised.

Programs that read other runs: expression stage 2 restores stage 1 from ``task.stage1``; when it
is empty, ``gohd-aot`` gives it a random stage 1 instead (the compiled step is the same: stage 1's
parameters are part of the train state either way, frozen by the optimizer; the restored values
only enter at initialisation, as ``Task.pretrained``). The animator's perceptual VGG19 runs only
with ``task.vgg19_weights``; ``--config.task.vgg19_weights=zeros`` compiles it from the weights'
shapes alone (the same program as with the converted weights: they are an argument of the
init and live in the state) without the file.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gohd_jax.aot import batches, report
from gohd_jax.aot.topology import Target
from gohd_jax.nn import policy as policy_lib
from gohd_jax.parallel import batch_sharding, make_mesh

__all__ = ["STAGE_PROGRAMS", "ProgramSpec", "Built", "program_specs", "make_task", "lower_train_step",
           "compile_program", "cpu_twin_cost", "search_max_batch"]

# task name -> the programs of that stage, in order
STAGE_PROGRAMS = {
    "animator": ("train", "encode", "render"),
    "motion_diffusion": ("train", "motion_ddpm150", "motion_ddim25"),
    "expression_stage1": ("train", "expression"),
    "expression_stage2": ("train", "expression"),
    "mouth_regressor": ("train",),
}
_SAMPLERS = {"motion_ddpm150": ("ddpm", 150), "motion_ddim25": ("ddim", 25)}


@dataclasses.dataclass
class Built:
    """One program at one batch: ``fn`` (jitted, shardings on the target mesh) and its abstract
    ``args`` (the first: parameters or train state); ``lower()`` lowers it (the train step through
    ``Trainer.lower_train_step``)."""

    fn: Any
    args: tuple
    lower: Callable[[], Any]
    batch: int                      # global: examples (train), clips, or frames (render)
    frames: int | None = None       # render: frames per call


@dataclasses.dataclass
class ProgramSpec:
    """A program of the stage; ``build(global_batch)`` makes it at that batch (a multiple of
    ``unit``)."""

    name: str
    kind: str                       # "train" | "infer"
    unit: int                       # global batches are multiples of this
    default_batch: int
    build: Callable[[int], Built]
    batch_label: str                # what the batch counts


# ----------------------------------------------------------------------------- tasks

def make_task(config):
    """The stage's task for compiling (see the module docstring for the two AOT stand-ins)."""
    from gohd_jax.train.tasks import get_task_class

    name = config.task_name
    cls = get_task_class(name)
    if name == "expression_stage2" and not str(config.task.get("stage1", "") or ""):
        return _stage2_with_random_stage1(cls, config)
    if name == "animator" and str(config.task.get("vgg19_weights", "")) == "zeros":
        cfg = copy.deepcopy(config)
        cfg.task.vgg19_weights = ""
        task = cls(cfg)
        from gohd_jax.models.vgg19 import VGG19Features

        task.use_vgg = True  # the VGG19 loss network's shapes; compiling needs no weights
        task.pretrained["vgg"] = nnx.state(nnx.eval_shape(VGG19Features.zeros)).to_pure_dict()
        return task
    return cls(config)


def _stage2_with_random_stage1(cls, config):

    class Stage2WithRandomStage1(cls):
        """ExpressionStage2Task without a stage-1 run: stage 1 keeps its random init."""

        def __init__(self, config):
            super(cls, self).__init__(config)  # the expression base: model config, mouth dims
            if self.model_cfg.controls != self.model_cfg.control_dim:
                raise ValueError(f"stage 2 generates the {self.model_cfg.control_dim} controls stage 1 "
                                 f"reads: task.controls must be {self.model_cfg.control_dim}")
            self.stage1_dir = "(none: random stage 1, gohd-aot)"

    return Stage2WithRandomStage1(config)


def lower_train_step(trainer, batch_spec):
    """The trainer's jitted step lowered for its abstract state and ``batch_spec``."""
    return trainer.lower_train_step(batch_spec)


# ----------------------------------------------------------------------------- helpers

def _replicated(tree, mesh: Mesh):
    rep = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def _rows(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=batch_sharding(mesh, len(shape)))


def _key_data_spec(mesh: Mesh, n: int) -> jax.ShapeDtypeStruct:
    kd = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    return _rows(mesh, (n, *kd.shape), kd.dtype)


def _jit(fn, args):
    """``fn`` jitted with the shardings of its abstract ``args`` and outputs split over the batch."""
    in_sh = jax.tree_util.tree_map(lambda a: a.sharding, args)
    mesh = next(a.sharding.mesh for a in jax.tree_util.tree_leaves(args)
                if isinstance(a.sharding, NamedSharding) and a.sharding.spec)
    out_sh = jax.tree_util.tree_map(lambda o: batch_sharding(mesh, len(o.shape)), jax.eval_shape(fn, *args))
    return jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh)


def _built(fn, args, batch: int, *, frames: int | None = None) -> Built:
    jitted = _jit(fn, args)
    return Built(fn=jitted, args=args, lower=lambda: jitted.lower(*args), batch=batch, frames=frames)


# ----------------------------------------------------------------------------- the programs

def program_specs(config, target: Target, names=None, *, render_batch: int = 64, clips: int = 1
                  ) -> list[ProgramSpec]:
    """The stage's programs (``names``: a subset of ``STAGE_PROGRAMS[task]``, default all)."""
    task_name = config.task_name
    if task_name not in STAGE_PROGRAMS:
        raise ValueError(f"gohd-aot does not know task {task_name!r}; it compiles "
                         f"{', '.join(sorted(STAGE_PROGRAMS))}")
    available = STAGE_PROGRAMS[task_name]
    names = list(available if not names else names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"{task_name} has no program {', '.join(unknown)}; its programs: {', '.join(available)}")
    task = make_task(config)
    specs = []
    chips = target.chips
    infer = None
    for name in names:
        if name == "train":
            specs.append(_train_spec(config, task, target))
            continue
        if infer is None:
            infer = _Inference(config, task, target)
        if name == "render":
            specs.append(ProgramSpec(name, "infer", chips, render_batch * chips, infer.render, "frames"))
        else:
            build = {"encode": infer.encode, "expression": infer.expression}.get(name)
            if build is None:
                build = lambda b, _n=name: infer.motion(b, *_SAMPLERS[_n])  # noqa: E731
            specs.append(ProgramSpec(name, "infer", chips, clips * chips, build, "clips"))
    return specs


def _train_spec(config, task, target: Target) -> ProgramSpec:
    from gohd_jax.train.trainer import Trainer

    mesh = make_mesh(int(config.mesh.data), int(config.mesh.fsdp), devices=target.devices)
    trainer = Trainer(task, config, "gohd-aot", mesh=mesh)

    def build(b: int) -> Built:
        spec = batches.train_batch_spec(config, mesh, b)
        return Built(fn=trainer._train_step, args=(trainer.abstract_state, spec),
                     lower=lambda: lower_train_step(trainer, spec), batch=b)

    return ProgramSpec("train", "train", mesh.size, int(config.batch_size), build, "examples")


class _Inference:
    """Abstract inference models of the stage on a data-parallel mesh over every chip."""

    def __init__(self, config, task, target: Target):
        self.config, self.task = config, task
        self.mesh = make_mesh(-1, 1, devices=target.devices)
        self.policy = policy_lib.resolve(str(config.get("precision", "auto")), platform=target.platform,
                                         remat="none")
        models = nnx.eval_shape(lambda: task.create_models(nnx.Rngs(0)))
        self.models = {k: policy_lib.apply(m, self.policy) for k, m in models.items()}

    # ---- animator (infer/animate.py: Animate's encode and render)
    def _animator(self):
        graph, state = nnx.split(self.models["generator"])
        return graph, _replicated(state, self.mesh)

    def encode(self, b: int) -> Built:
        graph, state = self._animator()
        s = int(self.task.model_cfg.size)

        def encode(state, src):
            return nnx.merge(graph, state).encode_source(src.astype(jnp.float32) / 127.5 - 1.0)

        return _built(encode, (state, _rows(self.mesh, (b, s, s, 3), jnp.uint8)), b)

    def render(self, r: int) -> Built:
        graph, state = self._animator()
        s = int(self.task.model_cfg.size)
        w_s, feats = jax.eval_shape(lambda st, x: nnx.merge(graph, st).encode_source(x), state,
                                    jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32))

        def render(state, w_s, feats, semantics):
            out = nnx.merge(graph, state).render(w_s, feats, semantics)["rgb"][0]
            return jnp.round((jnp.clip(out, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)

        window = int(self.task.model_cfg.window)
        args = (state, _rows(self.mesh, (r, w_s.shape[1]), w_s.dtype),
                tuple(_rows(self.mesh, (r, *f.shape[1:]), f.dtype) for f in feats),
                _rows(self.mesh, (r, window, int(self.task.model_cfg.semantic_dim)), jnp.float32))
        return _built(render, args, r, frames=r)

    # ---- motion (diffusion/windowing.py: WindowSampler, one window)
    def motion(self, b: int, method: str, steps: int) -> Built:
        from gohd_jax.diffusion import samplers, windowing

        model = self.models["denoiser"]
        residual = self.config.task.target == "pose"
        sampler = windowing.WindowSampler(model, spec=samplers.SamplerSpec(method=method, steps=steps),
                                          residual=residual, alignment="training",
                                          data_scale=float(self.config.task.get("data_scale", 1.0)))
        cfg = model.cfg
        w = int(self.config.data.window)

        def window(state, cond, prev, key_data):
            keys = jax.vmap(jax.random.wrap_key_data)(key_data)
            return sampler._window(state, cond, prev, keys)

        args = (_replicated(sampler.state, self.mesh), _rows(self.mesh, (b, w, int(cfg.local_dim)), jnp.float32),
                _rows(self.mesh, (b, int(cfg.in_channels)), jnp.float32), _key_data_spec(self.mesh, b))
        return _built(window, args, b)

    # ---- expression (infer/expression.py: ExpressionWindows, one window)
    def expression(self, b: int) -> Built:
        from gohd_jax.infer.expression import ExpressionWindows

        gen = ExpressionWindows(self.models["expression"], window=int(self.config.data.window))
        cfg, L = gen.cfg, gen.window
        state = _replicated(gen.state, self.mesh)
        audio = _rows(self.mesh, (b, L, *batches.MEL_WINDOW), jnp.float32)
        exp0 = _rows(self.mesh, (b, int(cfg.exp_dim)), jnp.float32)
        eye = _rows(self.mesh, (b, L), jnp.float32)  # the given eye control per frame (NaN: generated)
        if gen.two_stage:
            def window(state, audio, exp0, control0, key_data, eye):
                keys = jax.vmap(jax.random.wrap_key_data)(key_data)
                return gen._window(state, audio, exp0, control0, keys, eye)

            args = (state, audio, exp0, _rows(self.mesh, (b, int(cfg.control_dim)), jnp.float32),
                    _key_data_spec(self.mesh, b), eye)
        elif cfg.controls:
            def window(state, audio, exp0, controls, eye):
                return gen._window(state, audio, exp0, controls, None, eye)[0]

            args = (state, audio, exp0, _rows(self.mesh, (b, L, int(cfg.controls)), jnp.float32), eye)
        else:
            def window(state, audio, exp0, eye):
                return gen._window(state, audio, exp0, None, None, eye)[0]

            args = (state, audio, exp0, eye)
        return _built(window, args, b)


# ----------------------------------------------------------------------------- compiling

def cpu_twin_cost(built: Built, compiled) -> tuple[dict[str, float] | None, str]:
    """(FLOPs and bytes accessed per device, HLO text) of ``built``'s program compiled by XLA:CPU
    for a CPU mesh of the target mesh's shape (needs that many CPU devices: ``jax_num_cpu_devices``).

    The program is traced once for the target (``jax.export`` for the CPU platform), so the CPU
    compiles the same computation: the target's precision policy, shapes and shardings."""
    target_mesh = next(s.mesh for s in jax.tree_util.tree_leaves(compiled.input_shardings)
                       if isinstance(s, NamedSharding))
    cpus = jax.devices("cpu")
    if len(cpus) < target_mesh.size:
        return None, ""
    cpu_mesh = Mesh(np.array(cpus[:target_mesh.size]).reshape(target_mesh.devices.shape), target_mesh.axis_names,
                    axis_types=target_mesh.axis_types)

    def remap(s):
        if isinstance(s, NamedSharding):
            return NamedSharding(cpu_mesh, s.spec)
        if s.is_fully_replicated:
            return NamedSharding(cpu_mesh, P())
        raise ValueError(f"cannot carry sharding {s} over to the CPU mesh")

    exported = jax.export.export(built.fn, platforms=("cpu",))(*built.args)
    in_sh = jax.tree_util.tree_map(lambda a: remap(a.sharding), built.args)
    out_sh = jax.tree_util.tree_map(remap, compiled.output_shardings)
    args = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), built.args, in_sh)
    twin = jax.jit(exported.call, in_shardings=in_sh, out_shardings=out_sh).lower(*args).compile()
    return report.cost(twin.cost_analysis()), twin.as_text()


def compile_program(spec: ProgramSpec, built: Built, target: Target, *, hlo_dir=None) -> dict[str, Any]:
    """Compiles ``built`` for ``target`` and returns its report record (``report`` module)."""
    chip = target.chip
    rec: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "topology": target.name,
                           "platform": target.platform, "chip": chip.name, "chips": target.chips,
                           "batch": built.batch, "batch_unit": spec.batch_label,
                           "batch_per_chip": built.batch / target.chips, "hbm_bytes_per_chip": chip.hbm_bytes,
                           "gflops_total": None, "gflops_per_chip": None, "bytes_accessed_per_chip": None,
                           "peak_bytes_per_chip": None, "collectives": None, "step_time_bound_s": None}
    t0 = time.perf_counter()
    try:
        compiled = built.lower().compile()
    except Exception as e:  # noqa: BLE001
        if not report.is_oom(e):
            raise
        rec.update(fits=False, compile_s=round(time.perf_counter() - t0, 2),
                   error=str(e).strip().splitlines()[0][:500])
        return rec
    rec["compile_s"] = round(time.perf_counter() - t0, 2)
    rec.update(report.memory(compiled))
    try:
        formats = compiled.input_formats
    except Exception:  # noqa: BLE001  (layouts are a refinement; plain sizes without them)
        formats = None
    rec["argument_breakdown"] = report.argument_breakdown(built.args, formats)
    rec["fits"] = rec["peak_bytes_per_chip"] <= chip.hbm_bytes
    text = compiled.as_text()
    rec["collectives"] = report.collectives(text)
    if hlo_dir is not None:
        from pathlib import Path

        Path(hlo_dir).mkdir(parents=True, exist_ok=True)
        (Path(hlo_dir) / f"{spec.name}.{target.name.replace(':', '_')}.b{built.batch}.hlo.txt").write_text(text)
    c = report.cost(compiled.cost_analysis()) if target.platform == "tpu" else None
    rec["cost_source"] = "xla-" + target.platform
    cost_text = text  # the program the cost was counted on
    if c is None:
        t1 = time.perf_counter()
        rec["cost_source"] = "cpu-twin"
        try:
            c, cost_text = cpu_twin_cost(built, compiled)
        except Exception as e:  # noqa: BLE001  (memory and collectives stand without the cost)
            rec["cost_error"] = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        rec["cost_compile_s"] = round(time.perf_counter() - t1, 2)
    if c is not None and " while(" in cost_text:
        t1 = time.perf_counter()
        corr = report.loop_correction(built.fn.trace(*built.args).jaxpr)
        rec["loops"] = corr["loops"]
        if corr["loops"]:
            c = {"flops": c["flops"] + corr["extra_flops"] / target.chips,
                 "bytes": c["bytes"] + corr["extra_bytes"] / target.chips}
            rec["loop_correction_gflops_per_chip"] = corr["extra_flops"] / target.chips / 1e9
            rec["loop_correction_bytes_per_chip"] = corr["extra_bytes"] / target.chips
        rec["loop_correction_s"] = round(time.perf_counter() - t1, 2)
    if c is not None:
        rec["gflops_per_chip"] = c["flops"] / 1e9
        rec["gflops_total"] = c["flops"] * target.chips / 1e9
        rec["bytes_accessed_per_chip"] = c["bytes"]
        bound, by = report.time_bound(c["flops"], c["bytes"], chip)
        rec["step_time_bound_s"], rec["bound_by"] = bound, by
        if built.frames:
            rec["gflops_per_frame"] = rec["gflops_total"] / built.frames
            rec["bytes_per_frame"] = c["bytes"] * target.chips / built.frames
    return rec


def search_max_batch(spec: ProgramSpec, compile_at: Callable[[int], dict[str, Any]], *, max_per_unit: int = 1 << 16,
                     resolution: float = 0.0, max_growth: float = 8.0, start: int | None = None,
                     progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """The record of the largest global batch (a multiple of ``spec.unit``) whose compile fits.

    ``compile_at(batch)`` compiles and returns the record (``compile_program``). Peak memory is
    close to linear in the batch (arguments + per-example activations), so each guess comes from
    the compiles so far: from one fitting compile, batch x memory / peak (a lower bound of the
    limit when memory is affine with a positive intercept); from two, the line through them.
    A guess that fails (memory is not quite linear: XLA's fusion and layout change with shape)
    makes the next step a bisection. No guess goes beyond ``max_growth`` x the largest fit: at a
    small batch the fixed memory (parameters, optimizer state) hides the per-example slope, and an
    extrapolation from there overshoots by orders of magnitude; a compile far beyond the memory
    limit is also the slowest kind (XLA's rematerialisation pass tries for minutes to fit it: the
    gaze step for 8 H100s at 58,476 per chip took 1,872 s to fail). The search stops when the
    largest fit and the smallest failure are one unit apart, or within ``resolution`` x the fit
    (e.g. 0.1: within 10%). ``start`` is the first batch compiled (default ``spec.default_batch``),
    rounded down to a multiple of the unit: start where an earlier compile says the limit is near
    (an official step that fits at batch 64 in a quarter of the chip: start at 256) to save the
    small compiles, each of which costs as much as a large one.
    """
    unit = spec.unit
    tried: dict[int, dict[str, Any]] = {}
    cap = max_per_unit * unit

    def fits(b: int) -> bool:
        tried[b] = compile_at(b)
        return bool(tried[b]["fits"])

    def guess(lo: int, hi: int | None, bisect: bool) -> int:
        if bisect and hi is not None:
            return (lo + hi) // 2 // unit * unit
        pts = sorted((b, r["peak_bytes_per_chip"], r["hbm_bytes_per_chip"]) for b, r in tried.items()
                     if r["fits"] and r.get("peak_bytes_per_chip") and r.get("hbm_bytes_per_chip"))
        if len(pts) >= 2 and pts[-1][1] > pts[-2][1]:
            (b0, p0, hbm), (b1, p1, _) = pts[-2], pts[-1]
            want = b1 + (hbm - p1) * (b1 - b0) / (p1 - p0)
        elif pts:
            b1, p1, hbm = pts[-1]
            want = b1 * hbm / p1
        else:
            want = 2 * lo
        g = int(min(want, max_growth * lo)) // unit * unit
        return g if hi is None else min(g, (lo + hi) // 2 // unit * unit if g >= hi else g)

    b = min(cap, max(unit, (spec.default_batch if start is None else start) // unit * unit))
    lo: int | None = None
    hi: int | None = None
    if fits(b):
        lo = b
    else:
        hi = b
        while lo is None and b > unit:
            b = max(unit, b // 2 // unit * unit)
            if fits(b):
                lo = b
            else:
                hi = b
        if lo is None:
            return {**tried[unit], "max_batch": 0, "max_batch_compiles": len(tried)}
    bisect = False
    while hi is None or hi - lo > max(unit, resolution * lo):
        if hi is None and lo >= cap:
            progress(f"  {spec.name}: still fits at {lo} ({lo // unit} per chip); stopping the search there")
            break
        b = min(cap, max(lo + unit, guess(lo, hi, bisect)))
        if hi is not None:
            b = min(b, hi - unit)
        if b in tried:  # the model repeats itself: bisect instead
            b = (lo + hi) // 2 // unit * unit if hi is not None else min(cap, 2 * lo)
        if fits(b):
            lo, bisect = b, False
        else:
            hi, bisect = b, True
    return {**tried[lo], "max_batch": lo, "max_batch_next_tried": hi, "max_batch_compiles": len(tried)}
