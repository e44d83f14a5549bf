"""Train one stage on the sharded trainer.

    python launch/train.py --config=configs/mouth_regressor.py:tiny --workdir=workdir/mouth \
        [--config.batch_size=32 --config.mesh.fsdp=2 ...]

Rerunning the same command resumes from the latest checkpoint in --workdir, and, with JAX's
persistent compilation cache (on by default: ``--config.compile_cache.dir``, default
$GOHD_COMPILE_CACHE or ~/.cache/gohd_jax/xla; off with ``--config.compile_cache.enabled=False``),
skips the compiles of the run before.

Several processes (SLURM, a TPU VM slice, GKE, or by hand): each runs this same command.
``--distributed=auto`` (default) calls ``jax.distributed.initialize()`` when the environment
shows several processes (``gohd_jax/distributed.py``: SLURM, Open MPI, JAX_COORDINATOR_ADDRESS,
GKE TPU pods, Cloud TPU VM slices) or with --num_processes > 1 (then also give --coordinator and
--process_id); ``on`` always, ``off`` never. ``--dry_run`` prints what this process would do
(its rank, the process count, the GPUs it would use) as one JSON line and exits: the launchers'
dry-run modes run it on every rank. See launch/README.md.

A run stopped by preemption (SIGTERM, or JAX's preemption notice on a multi-process run) saves
a checkpoint and exits with ``--preempted_exit_code`` (default 0); the SLURM script sets it so
that it can requeue the job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config: configs/NAME.py:VARIANT.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl, tensorboard/.")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process by hand).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process by hand).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process by hand).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Fake CPU devices per process (testing meshes).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Join a multi-process run: auto (when the environment shows several processes), "
                                 "on (always; JAX finds the cluster) or off.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print this process's multi-process plan as JSON and exit.")
_PREEMPTED_EXIT = flags.DEFINE_integer("preempted_exit_code", 0, "Exit status after a preemption's checkpoint "
                                       "(the SLURM script uses it to requeue).")
flags.mark_flags_as_required(["config", "workdir"])


def _start_compile_cache(cfg) -> None:
    """JAX's persistent compilation cache (``gohd_jax/compile_cache.py``), before any compile."""
    from gohd_jax import compile_cache

    cc = cfg.get("compile_cache") or {}
    where = compile_cache.enable(str(cc.get("dir", "") or "") or None, enabled=bool(cc.get("enabled", True)))
    logging.info("compilation cache: %s", where or "off")


def main(argv) -> None:
    del argv
    from gohd_jax import distributed

    try:
        plan = distributed.plan(_DISTRIBUTED.value, coordinator=_COORD.value, num_processes=_NPROC.value,
                                process_id=_PID.value)
    except ValueError as e:
        logging.error("%s", e)
        sys.exit(2)
    if _DRY_RUN.value:
        print(json.dumps({"host": os.uname().nodename, **plan.describe()}), flush=True)
        return
    import jax

    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    _start_compile_cache(_CONFIG.value)
    distributed.initialize(plan)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/Grain chatter off; our own log stays INFO
    logging.getLogger("gohd_jax").setLevel(logging.INFO)

    from data_pipelines.records import DatasetError
    from gohd_jax.train.tasks import get_task_class
    from gohd_jax.train.trainer import Trainer, TrainingDiverged

    cfg = _CONFIG.value
    try:
        task = get_task_class(cfg.task_name)(cfg)
        result = Trainer(task, cfg, _WORKDIR.value).train()
    except (TrainingDiverged, DatasetError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(1)
    rates = ("steps_per_s", "examples_per_s", "eta_s")
    terms = {k: v for k, v in {**result.metrics, **result.eval_metrics}.items() if k not in rates}
    print(f"{result.status} at step {result.step}: " + " ".join(f"{k}={v:.6g}" for k, v in sorted(terms.items())),
          flush=True)
    if result.status == "preempted" and _PREEMPTED_EXIT.value:
        sys.exit(_PREEMPTED_EXIT.value)


if __name__ == "__main__":
    app.run(main)
