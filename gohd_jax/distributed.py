"""Whether and how a process joins a multi-process JAX run (``jax.distributed.initialize``).

``plan()`` reads the environment (never starts JAX) and says what this process would do, so the
launchers' dry-run modes can print it for every rank:

* ``--distributed=off``: one process, whatever the environment says.
* by hand: ``--num_processes=N --process_id=I --coordinator=HOST:PORT`` (N > 1).
* ``auto`` (default) initialises when the environment shows several processes:
  SLURM (``SLURM_NTASKS`` > 1), Open MPI (``OMPI_COMM_WORLD_SIZE`` > 1), JAX's own variables
  (``JAX_COORDINATOR_ADDRESS``), GKE TPU pods (``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES``
  with several hosts), and Cloud TPU VM slices, which set none of these: there the GCE metadata
  server lists the slice's workers (asked only on a host with TPU devices, with a 2 s timeout).
* ``on``: always initialise and let JAX find the cluster (it knows the same environments).

SLURM GPU nodes, two modes: one process per GPU (``--ntasks-per-node=8 --gpus-per-node=8``:
every task sees the node's 8 GPUs and JAX gives task ``SLURM_LOCALID`` its own), or one process per
node (``--ntasks-per-node=1``): JAX's SLURM detection would give that process only GPU
``SLURM_LOCALID`` = 0, so the plan passes every visible GPU as ``local_device_ids``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Plan", "plan", "initialize", "MODES"]

MODES = ("auto", "on", "off")
_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"


@dataclasses.dataclass
class Plan:
    initialize: bool
    environment: str           # slurm | ompi | jax-env | gke-tpu | tpu-vm | manual | forced | single
    reason: str
    kwargs: dict[str, Any]     # for jax.distributed.initialize (JAX detects the rest)
    process_id: int | None = None
    num_processes: int | None = None
    local_device_ids: list[int] | None = None   # None: JAX's default for the environment
    visible_gpus: str | None = None              # CUDA_VISIBLE_DEVICES as this process sees it

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tpu_vm_workers(timeout_s: float = 2.0) -> int:
    """Workers of this Cloud TPU VM slice from the metadata server (0 when not a TPU VM)."""
    if not (glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")):
        return 0
    req = urllib.request.Request(_METADATA + "worker-network-endpoints", headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 (a fixed internal address)
            text = r.read().decode()
    except OSError:
        return 0
    return len([w for w in text.split(",") if w.strip()])


def _int(env: Mapping[str, str], name: str, default: int = 0) -> int:
    m = re.match(r"\d+", env.get(name, "") or "")
    return int(m.group()) if m else default


def _gpu_ids(env: Mapping[str, str]) -> list[int] | None:
    """The GPUs this process sees, by local ordinal (CUDA_VISIBLE_DEVICES, else SLURM's count)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return list(range(len([v for v in visible.split(",") if v.strip()])))
    n = _int(env, "SLURM_GPUS_ON_NODE")
    return list(range(n)) if n else None


def plan(mode: str = "auto", *, coordinator: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, environ: Mapping[str, str] | None = None,
         tpu_vm_workers: Callable[[], int] = _tpu_vm_workers) -> Plan:
    env = os.environ if environ is None else environ
    if mode not in MODES:
        raise ValueError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if mode == "off":
        return Plan(False, "single", "--distributed=off", {}, visible_gpus=visible)
    if num_processes is not None:
        if num_processes > 1 and (coordinator is None or process_id is None):
            raise ValueError("--num_processes > 1 needs --coordinator=HOST:PORT and --process_id too")
        return Plan(num_processes > 1, "manual", f"--num_processes={num_processes}",
                    {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
                    if num_processes > 1 else {}, process_id, num_processes, visible_gpus=visible)
    ntasks = _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")
    if ntasks > 1 and "SLURM_PROCID" in env:
        nodes = _int(env, "SLURM_STEP_NUM_NODES") or _int(env, "SLURM_NNODES", 1)
        per_node = _int(env, "SLURM_NTASKS_PER_NODE") or _int(env, "SLURM_STEP_TASKS_PER_NODE") or ntasks // nodes
        kwargs: dict[str, Any] = {}
        local = None
        if per_node == 1:  # one process per node: all of the node's GPUs, not only ordinal 0
            local = _gpu_ids(env)
            if local:
                kwargs["local_device_ids"] = local
        else:
            local = [_int(env, "SLURM_LOCALID")]
        return Plan(True, "slurm", f"SLURM: {ntasks} tasks on {nodes} nodes, {per_node} per node", kwargs,
                    _int(env, "SLURM_PROCID"), ntasks, local, visible)
    if _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return Plan(True, "ompi", f"Open MPI: {env['OMPI_COMM_WORLD_SIZE']} ranks", {},
                    _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE"), visible_gpus=visible)
    if env.get("JAX_COORDINATOR_ADDRESS"):
        pid = _int(env, "JAX_PROCESS_ID") if "JAX_PROCESS_ID" in env else None
        nproc = _int(env, "JAX_NUM_PROCESSES") or None
        # JAX reads the address from the environment itself, but not the count and rank
        return Plan(True, "jax-env", f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']}",
                    {"num_processes": nproc, "process_id": pid}, pid, nproc, visible_gpus=visible)
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        n = len([h for h in hosts.split(",") if h.strip()])
        return Plan(True, "gke-tpu", f"TPU pod on GKE: {n} hosts", {},
                    _int(env, "TPU_WORKER_ID") if "TPU_WORKER_ID" in env else None, n)
    if mode == "on":
        return Plan(True, "forced", "--distributed=on (JAX detects the cluster)", {}, visible_gpus=visible)
    workers = tpu_vm_workers()
    if workers > 1:
        return Plan(True, "tpu-vm", f"Cloud TPU VM slice: {workers} workers (GCE metadata)", {}, None, workers)
    return Plan(False, "single", "no multi-process environment found", {}, visible_gpus=visible)


def initialize(p: Plan) -> None:
    """``jax.distributed.initialize`` as planned (nothing for a single process)."""
    if not p.initialize:
        return
    import jax

    jax.distributed.initialize(**{k: v for k, v in p.kwargs.items() if v is not None})
