"""What a compiled program costs on its target: memory, FLOPs, bytes, collectives, a time bound.

Per program (all "per chip" numbers are of one device's SPMD program, as XLA reports them):

* memory (``compiled.memory_analysis()``): argument, output, temporary and aliased (donated)
  bytes; peak = argument + output + temp - alias (MaxText's "total estimated memory"; the
  compiler may over-estimate), against the chip's HBM: ``fits`` when peak <= HBM and the compile
  did not run out of memory (an error with RESOURCE_EXHAUSTED or "hbm", as MaxText's ``is_oom``);
* cost: FLOPs and bytes accessed per chip. TPU: XLA's own count for the compiled TPU program.
  GPU: the deviceless GPU executable has no cost analysis, so the same program (traced once for
  the GPU target: its precision policy, shapes and shardings) is exported for the CPU
  (``jax.export``) and compiled by XLA:CPU for a CPU mesh of the same shape; its per-device
  count is reported (``cost_source``: "cpu-twin"). FLOPs are the same program's; bytes accessed
  follow XLA:CPU's fusion decisions, not XLA:GPU's, so take them as an estimate.
  ``gflops_total`` = per chip x chips (replicated work counts once per chip). XLA counts a loop's
  body once, whatever its trip count; for programs with loops (``lax.scan``: the samplers' chains,
  the LSTM) the FLOPs and bytes of the matmuls and convolutions of the further trips, counted on
  the program's jaxpr (``loop_correction``), are added, split evenly over the chips
  (``loop_correction_gflops_per_chip``). Elementwise work of those trips is not added;
* collectives of the compiled program's HLO (``compiled.as_text()``): count and bytes (the
  result shapes) of all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute,
  async pairs counted once (at their ``-done``);
* a step-time **lower bound**: max(FLOPs per chip / peak bf16 FLOP/s, bytes per chip / HBM
  bandwidth), saying which binds. A bound from the roofline, not a prediction: it ignores
  collectives, launch overheads and whether the program can reach the peak.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["COLLECTIVES", "collectives", "constant_bytes", "is_oom", "memory", "cost", "time_bound", "padded_nbytes",
           "per_chip_bytes", "argument_breakdown", "loop_correction", "markdown_table", "fmt_bytes"]

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 1, "u4": 1, "s2": 1, "u2": 1}
# "  %name = TYPE opcode(" or "  ROOT %name = TYPE opcode("
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]+m[0-9]+\w*)?)\[([0-9,]*)\]")


def _shape_bytes(type_text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype == "token":
            continue
        size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") or dtype.startswith("f4") else 4)
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count", "bytes"}} of the collectives in compiled HLO text (see the module docstring)."""
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        type_text, opcode = m.groups()
        op = opcode[:-len("-done")] if opcode.endswith("-done") else opcode
        if op in out and not opcode.endswith("-start"):
            out[op]["count"] += 1
            out[op]["bytes"] += _shape_bytes(type_text)
    return out


_CONSTANT = re.compile(r"stablehlo\.constant\s+dense<(.)[^>]*>\s*:\s*tensor<([^>]*)>")


def constant_bytes(stablehlo_text: str) -> int:
    """Bytes of the non-splat constants of a lowered program's StableHLO text (``lowered.as_text()``):
    weights closed over by a jitted function end up here, baked into every compile. Splats (one
    value broadcast, e.g. zeros) cost nothing and are not counted."""
    total = 0
    for first, ttype in _CONSTANT.findall(stablehlo_text):
        if first not in '["':
            continue  # a splat
        *dims, dtype = ttype.split("x")
        size = _DTYPE_BYTES.get({"i1": "pred", "i8": "s8", "i32": "s32", "i64": "s64", "ui8": "u8",
                                 "ui32": "u32", "ui64": "u64"}.get(dtype, dtype), 4)
        total += size * math.prod(int(d) for d in dims if d.isdigit())
    return total


def is_oom(error: BaseException | str) -> bool:
    """A compile error that means "does not fit" (MaxText's ``is_oom``)."""
    text = str(error).lower()
    return "resource_exhausted" in text or "hbm" in text or "out of memory" in text


def memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    if isinstance(m, (list, tuple)):
        m = m[0]
    out = {"argument_bytes_per_chip": int(m.argument_size_in_bytes),
           "output_bytes_per_chip": int(m.output_size_in_bytes),
           "temp_bytes_per_chip": int(m.temp_size_in_bytes),
           "alias_bytes_per_chip": int(m.alias_size_in_bytes),
           "host_temp_bytes_per_chip": int(getattr(m, "host_temp_size_in_bytes", 0))}
    out["peak_bytes_per_chip"] = (out["argument_bytes_per_chip"] + out["output_bytes_per_chip"]
                                  + out["temp_bytes_per_chip"] - out["alias_bytes_per_chip"])
    return out


def cost(analysis) -> dict[str, float] | None:
    """(flops, bytes accessed) per chip of a ``cost_analysis()`` result, None if there is none."""
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    return {"flops": float(analysis.get("flops", 0.0)), "bytes": float(analysis.get("bytes accessed", 0.0))}


def time_bound(flops_per_chip: float, bytes_per_chip: float, chip) -> tuple[float, str]:
    """(seconds, "compute" | "memory"): the roofline lower bound of one run of the program."""
    t_compute = flops_per_chip / chip.peak_flops
    t_memory = bytes_per_chip / chip.hbm_bandwidth
    return (t_compute, "compute") if t_compute >= t_memory else (t_memory, "memory")


def padded_nbytes(shape, dtype, layout=None) -> int:
    """Bytes of an array of ``shape`` as laid out: the first tile of ``layout`` (a
    ``jax.experimental.layout.Layout``; TPUs tile the minor dims, e.g. (8, 128)) pads the most minor
    dimensions to its multiples; a scalar counts as one element. No layout: the plain size."""
    import numpy as np

    itemsize = np.dtype(dtype).itemsize
    dims = [int(d) for d in shape]
    tiling = getattr(layout, "tiling", None) if layout is not None else None
    if tiling:
        order = getattr(layout, "major_to_minor", None)
        if order is not None and len(order) == len(dims):
            dims = [dims[i] for i in order]
        tile = tiling[0]
        if not dims:
            dims = [1]
        k = min(len(tile), len(dims))
        for j in range(1, k + 1):
            dims[-j] = -(-dims[-j] // int(tile[-j])) * int(tile[-j])
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def per_chip_bytes(tree, formats=None) -> int:
    """Bytes one chip holds of a tree of sharded arrays / ShapeDtypeStructs (each leaf's shard),
    padded as ``formats`` (the compiled program's ``input_formats`` for the tree) lay them out."""
    import jax

    leaves = jax.tree_util.tree_leaves(tree)
    layouts = [getattr(f, "layout", None) for f in jax.tree_util.tree_leaves(formats)] if formats else []
    if len(layouts) != len(leaves):
        layouts = [None] * len(leaves)
    total = 0
    for leaf, layout in zip(leaves, layouts):
        shape = tuple(leaf.shape)
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            shape = tuple(sharding.shard_shape(shape))
        total += padded_nbytes(shape, leaf.dtype, layout)
    return total


def argument_breakdown(args, formats=None) -> dict[str, Any]:
    """Where a program's argument bytes come from: the state (``args[0]``: parameters, optimizer
    state...) split into replicated and sharded leaves, and the other inputs (the batch).

    ``*_per_chip``: one chip's bytes as laid out (``formats``, the compiled program's
    ``input_formats``: padded to the target's tiles); ``*_global``: the plain bytes of the whole
    arrays, from which the per-chip share follows as replicated + sharded / shards + inputs /
    chips. Arguments the program never reads (jit drops them: e.g. the decoder's parameters in
    ``encode``) have no layout and are counted in ``unused_global`` only."""
    import jax
    import numpy as np

    out: dict[str, Any] = {k: 0 for k in ("state_replicated_per_chip", "state_sharded_per_chip",
                                          "inputs_per_chip", "state_replicated_global",
                                          "state_sharded_global", "inputs_global", "unused_global")}
    fmt_args = formats[0] if isinstance(formats, (tuple, list)) and len(formats) == 2 else None
    if fmt_args is not None and len(fmt_args) != len(args):
        fmt_args = None
    any_layout = fmt_args is not None and any(
        getattr(f, "layout", None) is not None for f in jax.tree_util.tree_leaves(fmt_args))
    shard_counts = set()
    for i, arg in enumerate(args):
        leaves = jax.tree_util.tree_leaves(arg)
        fl = jax.tree_util.tree_leaves(fmt_args[i]) if any_layout else []
        layouts = [getattr(f, "layout", None) for f in fl] if len(fl) == len(leaves) else [None] * len(leaves)
        for leaf, layout, fmt in zip(leaves, layouts, fl if fl else [None] * len(leaves)):
            shape = tuple(leaf.shape)
            shard = tuple(leaf.sharding.shard_shape(shape)) if getattr(leaf, "sharding", None) else shape
            raw = int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
            if fmt is not None and layout is None:  # dropped by jit: never read
                out["unused_global"] += raw
                continue
            padded = padded_nbytes(shard, leaf.dtype, layout)
            if i:
                out["inputs_per_chip"] += padded
                out["inputs_global"] += raw
            elif shard == shape:
                out["state_replicated_per_chip"] += padded
                out["state_replicated_global"] += raw
            else:
                out["state_sharded_per_chip"] += padded
                out["state_sharded_global"] += raw
                shard_counts.add(int(np.prod(shape) // max(1, int(np.prod(shard)))))
    out["state_shards"] = sorted(shard_counts)
    return out


def _aval_bytes(v) -> int:
    import numpy as np

    aval = getattr(v, "aval", None)
    if aval is None or not hasattr(aval, "shape") or not hasattr(aval, "dtype"):
        return 0
    try:
        return int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
    except TypeError:  # key types and other extended dtypes
        return 0


def _op_flops(eqn) -> float:
    """Multiply-add FLOPs (x2) of a dot_general or conv_general_dilated equation."""
    import numpy as np

    out = float(np.prod(eqn.outvars[0].aval.shape, dtype=np.float64))
    if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * out * float(np.prod([lhs[d] for d in lhs_contract], dtype=np.float64))
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
    window = float(np.prod([rhs[d] for d in spec[2:]], dtype=np.float64)) * rhs[spec[1]]
    return 2.0 * out * window


def _sub_jaxprs(params) -> list:
    from jax.extend import core as jcore

    subs = []
    for v in params.values():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, jcore.ClosedJaxpr):
                subs.append(x.jaxpr)
            elif isinstance(x, jcore.Jaxpr):
                subs.append(x)
    return subs


def _walk(jaxpr) -> tuple[float, float, float, float, int]:
    """(FLOPs, bytes) of the matmuls and convolutions of ``jaxpr`` with every loop body counted
    once (as XLA's cost analysis does) and with scan bodies counted ``length`` times, and the
    number of scans with length > 1."""
    f1 = b1 = ft = bt = 0.0
    loops = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            f = _op_flops(eqn)
            b = float(sum(_aval_bytes(v) for v in (*eqn.invars, *eqn.outvars)))
            f1, ft, b1, bt = f1 + f, ft + f, b1 + b, bt + b
            continue
        subs = [_walk(j) for j in _sub_jaxprs(eqn.params)]
        if not subs:
            continue
        if name == "cond":  # one branch runs: the most expensive
            subs = [max(subs, key=lambda r: r[2])]
        mult = int(eqn.params.get("length", 1)) if name == "scan" else 1
        loops += (mult > 1) + sum(r[4] for r in subs)
        for a, b, c, d, _ in subs:
            f1, b1, ft, bt = f1 + a, b1 + b, ft + c * mult, bt + d * mult
    return f1, b1, ft, bt, loops


def loop_correction(closed_jaxpr) -> dict[str, float]:
    """What XLA's cost analysis misses in loops: it counts a while loop's body once, whatever its
    trip count (the motion samplers' 150 steps, the LSTM's frames). From the program's jaxpr: the
    FLOPs and operand + result bytes of the matmuls and convolutions in ``scan`` bodies times
    (length - 1), summed over every scan (nested ones multiply). Global (all chips) numbers."""
    f1, b1, ft, bt, loops = _walk(closed_jaxpr.jaxpr)
    return {"loops": loops, "extra_flops": ft - f1, "extra_bytes": bt - b1}


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} us"


def _fmt_collectives(c: dict[str, dict[str, int]] | None) -> str:
    if not c:
        return "-"
    parts = [f"{op} {v['count']}x {fmt_bytes(v['bytes'])}" for op, v in c.items() if v["count"]]
    return ", ".join(parts) or "none"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per program (the JSON record of ``gohd-aot``)."""
    head = ("| program | target | batch | GFLOPs total | GFLOPs/chip | bytes/chip | args/chip | temp/chip | "
            "peak/chip | HBM/chip | fits | collectives | step bound | compile |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        bound = r.get("step_time_bound_s")
        bound_s = f"{_fmt_time(bound)} ({r['bound_by']})" if bound is not None else "-"
        per_frame = ""
        if r.get("gflops_per_frame") is not None:
            per_frame = f" ({r['gflops_per_frame']:.3g}/frame)"
        lines.append(
            f"| {r['name']} | {r['topology']} | {r['batch']} | "
            f"{_g(r.get('gflops_total'))}{per_frame} | {_g(r.get('gflops_per_chip'))} | "
            f"{fmt_bytes(r.get('bytes_accessed_per_chip'))} | {fmt_bytes(r.get('argument_bytes_per_chip'))} | "
            f"{fmt_bytes(r.get('temp_bytes_per_chip'))} | {fmt_bytes(r.get('peak_bytes_per_chip'))} | "
            f"{fmt_bytes(r.get('hbm_bytes_per_chip'))} | {'yes' if r['fits'] else 'NO'} | "
            f"{_fmt_collectives(r.get('collectives'))} | {bound_s} | {r.get('compile_s', 0):.1f} s |")
    return "\n".join(lines)


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
