"""``gohd-aot``: compile a stage's train step and inference programs for TPU slices or NVIDIA GPU
nodes on this (CPU) machine, and report per-chip memory, FLOPs, bytes and collectives against the
chip (MaxText's ``train_compile.py``, for GoHD's stages).

    gohd-aot --config=configs/animator.py:official --topology=v5e:4x4 --json=fit.json
    gohd-aot --config=configs/animator.py:official --gpu=h100 --topology=1x2x8 \\
        --config.precision=bfloat16 --config.remat=blocks --programs=train,render
    gohd-aot --config=configs/motion.py:pose --topology=v5p:2x2x1 --max-batch --programs=train

``--topology``: a TPU slice GENERATION:DIMS (v4, v5e, v5p, v6e; e.g. v5e:4x4, v5p:4x4x4), or with
``--gpu`` (h100, a100, b200) PARTITIONSxHOSTSxGPUS (1x1x8: one node of 8 GPUs, 1x2x8: two).
The train step runs on the config's mesh (``--config.mesh.data`` / ``--config.mesh.fsdp``;
data=-1 takes the remaining chips) at the config's global batch; inference programs are
data-parallel over every chip (``--render-batch`` frames per chip for ``render``, ``--clips``
clips per chip for the others). ``--max-batch`` searches the largest batch that fits: each guess
comes from the peak memory of the compiles so far (memory is close to linear in the batch) and
is at most 8x the largest fit, a failed guess is followed by a bisection, and the search ends
one example / frame / clip per chip from the limit (or within ``--max-batch-resolution``); each
step is a compile, and the reported record is the compile at the largest batch that fits.

Output: a markdown table on stdout, progress on stderr, ``--json=FILE`` with ``{"programs":
[...]}`` (fields in ``gohd_jax/aot/report.py``). Exit status 1 when a program does not fit,
2 on a usage error (one line saying what to fix).

Needs the extras ``.[tpu]`` (libtpu) for TPU targets and ``.[gpu-aot]`` (the jax CUDA plugin,
without CUDA libraries) for GPU targets. The command sets ``JAX_PLATFORMS=cpu`` and
``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`` itself before JAX starts: nothing runs on this machine's
accelerators, if it has any.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config: configs/NAME.py:VARIANT.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice (v5e:4x4, v5p:4x4x4, v6e:8x8, v4:2x2x2) or, with "
                                "--gpu, PARTITIONSxHOSTSxGPUS (1x1x8 = one node of 8).")
_GPU = flags.DEFINE_string("gpu", None, "NVIDIA GPU to compile for: h100, a100 or b200 (default: TPU).")
_JSON = flags.DEFINE_string("json", None, "Write the report here as JSON ({\"programs\": [...]}).")
_PROGRAMS = flags.DEFINE_list("programs", None, "Programs to compile (default: all of the stage): train, "
                              "encode, render, motion_ddpm150, motion_ddim25, expression.")
_MAX_BATCH = flags.DEFINE_bool("max-batch", False, "Search the largest batch that fits, per program.")
_RESOLUTION = flags.DEFINE_float("max-batch-resolution", 0.0, "With --max-batch: stop when the largest fit and "
                                 "the smallest failure are within this fraction of the fit (0: one chip's unit).")
_START = flags.DEFINE_integer("max-batch-start", None, "With --max-batch: the first batch to compile (default: "
                              "the config's), e.g. 4x a batch known to fit in a quarter of the chip.")
_RENDER_BATCH = flags.DEFINE_integer("render-batch", 64, "Frames per chip of the render program.")
_CLIPS = flags.DEFINE_integer("clips", 1, "Clips per chip of encode, motion and expression programs.")
_HLO_DIR = flags.DEFINE_string("hlo-dir", None, "Also write each compiled program's HLO text here.")
flags.mark_flags_as_required(["config", "topology"])

_MAX_PER_CHIP = 1 << 16  # --max-batch stops doubling here


def _progress(msg: str) -> None:
    print(f"gohd-aot: {msg}", file=sys.stderr, flush=True)


def _fail(msg: str, code: int = 2):
    print(f"gohd-aot: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def _compile_at(spec, b, target, hlo_dir):
    from gohd_jax.aot.programs import compile_program

    _progress(f"compiling {spec.name} for {target.name} ({target.chips} chips), batch {b} {spec.batch_label} "
              f"({b // target.chips} per chip)...")
    rec = compile_program(spec, spec.build(b), target, hlo_dir=hlo_dir)
    peak = rec.get("peak_bytes_per_chip")
    from gohd_jax.aot.report import fmt_bytes

    _progress(f"  {spec.name} batch {b}: {'fits' if rec['fits'] else 'does NOT fit'}"
              + (f", peak {fmt_bytes(peak)} of {fmt_bytes(rec['hbm_bytes_per_chip'])} per chip" if peak is not None
                 else f" ({rec.get('error', 'out of memory')})")
              + f", compiled in {rec['compile_s']:.1f} s")
    return rec


def _main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; flags look like --name=value")
    from gohd_jax.aot import topology

    topology.prepare_environment(gpu=True)  # before JAX starts
    import jax

    if _GPU.value:  # the CPU twin that counts FLOPs for the GPU program needs one CPU device per GPU
        n = topology.gpu_topology_chips(_TOPOLOGY.value)
        if n > 1:
            jax.config.update("jax_num_cpu_devices", n)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("gohd_jax").setLevel(logging.WARNING)

    cfg = _CONFIG.value
    if _RENDER_BATCH.value < 1 or _CLIPS.value < 1:
        _fail("--render-batch and --clips must be >= 1")
    try:
        target = topology.make_target(_TOPOLOGY.value, _GPU.value)
    except (topology.TopologyError, topology.MissingExtra, RuntimeError) as e:
        _fail(str(e))
    _progress(f"target {target.describe()}; config {cfg.task_name}, precision {cfg.get('precision', 'auto')}, "
              f"remat {cfg.get('remat', 'none')}")

    from gohd_jax.aot import programs, report

    try:
        specs = programs.program_specs(cfg, target, _PROGRAMS.value, render_batch=_RENDER_BATCH.value,
                                       clips=_CLIPS.value)
    except (ValueError, OSError) as e:  # config mistakes; a missing run folder (task.stage1, task.expert)
        _fail(str(e))
    from gohd_jax.nn import policy as policy_lib

    compute = policy_lib.resolve(str(cfg.get("precision", "auto")), platform=target.platform).compute
    results = []
    for spec in specs:
        if _MAX_BATCH.value:
            rec = programs.search_max_batch(spec, lambda b, _s=spec: _compile_at(_s, b, target, _HLO_DIR.value),
                                            max_per_unit=_MAX_PER_CHIP, resolution=_RESOLUTION.value,
                                            start=_START.value, progress=_progress)
        else:
            if spec.default_batch % spec.unit:
                _fail(f"{spec.name}: batch {spec.default_batch} does not divide over {spec.unit} chips; "
                      f"set --config.batch_size to a multiple of {spec.unit}")
            rec = _compile_at(spec, spec.default_batch, target, _HLO_DIR.value)
        rec["precision"] = str(cfg.get("precision", "auto"))
        rec["compute_dtype"] = compute
        rec["remat"] = str(cfg.get("remat", "none")) if spec.kind == "train" else "none"
        results.append(rec)

    print(report.markdown_table(results))
    if _JSON.value:
        path = Path(_JSON.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"target": {"name": target.name, "platform": target.platform,
                                               "chip": target.chip.name, "chips": target.chips,
                                               "hbm_bytes_per_chip": target.chip.hbm_bytes,
                                               "peak_bf16_flops": target.chip.peak_flops,
                                               "hbm_bandwidth": target.chip.hbm_bandwidth,
                                               "chip_source": target.chip.source},
                                    "config": cfg.to_dict(), "programs": results}, indent=1, default=str))
        _progress(f"wrote {path}")
    if not all(r["fits"] for r in results):
        bad = ", ".join(r["name"] for r in results if not r["fits"])
        _progress(f"does not fit on {target.name}: {bad}")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """The console script: ``argv`` default ``sys.argv``."""
    prog = (argv or sys.argv)[0]
    for name in ("config", "topology", "gpu", "json", "programs", "max-batch", "max-batch-resolution",
                 "max-batch-start", "render-batch", "clips", "hlo-dir"):
        flags.FLAGS.register_key_flag_for_module(prog, flags.FLAGS[name])  # shown by --help
    app.run(_main, argv=argv)


if __name__ == "__main__":
    main()
