"""Multi-process launch: the plan each process makes from its environment, and the SLURM and TPU
launchers in their dry-run modes (a fake ``srun`` plays SLURM: no cluster needed)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gohd_jax import distributed

REPO = Path(__file__).resolve().parent.parent
NO_TPU_VM = lambda: 0  # noqa: E731


def _slurm_env(rank: int, nodes: int, per_node: int, gpus: int = 8) -> dict[str, str]:
    return {"SLURM_JOB_ID": "77", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
            "SLURM_NODEID": str(rank // per_node), "SLURM_NTASKS": str(nodes * per_node),
            "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(per_node),
            "SLURM_JOB_NODELIST": f"gpu[1-{nodes}]", "SLURM_GPUS_ON_NODE": str(gpus),
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))}


def test_slurm_one_process_per_gpu_each_takes_its_own_gpu():
    plans = [distributed.plan(environ=_slurm_env(r, 2, 8), tpu_vm_workers=NO_TPU_VM) for r in range(16)]
    assert all(p.initialize and p.environment == "slurm" and p.num_processes == 16 for p in plans)
    assert [p.process_id for p in plans] == list(range(16))
    assert [p.local_device_ids for p in plans] == [[r % 8] for r in range(16)]
    assert all("local_device_ids" not in p.kwargs for p in plans)  # JAX's own SLURM default


def test_slurm_one_process_per_node_uses_all_its_gpus():
    plans = [distributed.plan(environ=_slurm_env(r, 2, 1), tpu_vm_workers=NO_TPU_VM) for r in range(2)]
    for p in plans:
        assert p.initialize and p.kwargs["local_device_ids"] == list(range(8)) == p.local_device_ids


@pytest.mark.parametrize("env,kind", [
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2"}, "ompi"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, "jax-env"),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "TPU_WORKER_ID": "3"}, "gke-tpu"),
])
def test_other_clusters_are_found(env, kind):
    p = distributed.plan(environ=env, tpu_vm_workers=NO_TPU_VM)
    assert p.initialize and p.environment == kind


def test_a_cloud_tpu_vm_slice_sets_no_variables_but_is_found():
    assert distributed.plan(environ={}, tpu_vm_workers=lambda: 4).environment == "tpu-vm"
    single = distributed.plan(environ={}, tpu_vm_workers=NO_TPU_VM)
    assert not single.initialize and single.environment == "single"
    assert not distributed.plan("off", environ=_slurm_env(0, 2, 8)).initialize
    assert distributed.plan("on", environ={}, tpu_vm_workers=NO_TPU_VM).initialize
    with pytest.raises(ValueError, match="--coordinator"):
        distributed.plan(num_processes=2, environ={})


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


_FAKE_SRUN = """#!/usr/bin/env bash
# Plays srun: FAKE_NODES x the job's tasks per node, each with SLURM's per-task variables.
while [[ "$1" == --* ]]; do shift; done
per=${SLURM_NTASKS_PER_NODE}; n=$((FAKE_NODES * per)); rc=0
for ((r = 0; r < n; r++)); do
  SLURM_PROCID=$r SLURM_LOCALID=$((r % per)) SLURM_NODEID=$((r / per)) SLURM_NTASKS=$n SLURM_NNODES=$FAKE_NODES \\
    SLURM_GPUS_ON_NODE=8 CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 "$@" || rc=$?
done
exit $rc
"""


def _sbatch(tmp_path, per_node: int, python: str, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _executable(bin_dir / "srun", _FAKE_SRUN)
    _executable(bin_dir / "scontrol", f"#!/usr/bin/env bash\necho \"$@\" > {tmp_path}/scontrol.txt\n")
    full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_NODES": "2",
            "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_JOB_ID": "77", "SLURM_SUBMIT_DIR": str(REPO),
            "PYTHON": python, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run(["bash", str(REPO / "launch" / "slurm_gpu.sbatch"), "configs/mouth_regressor.py:tiny",
                           str(tmp_path / "run")], env=full, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("per_node", [8, 1])
def test_slurm_script_dry_run_prints_what_each_rank_sees(tmp_path, per_node):
    proc = _sbatch(tmp_path, per_node, sys.executable, DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(plans) == 2 * per_node
    assert sorted(p["process_id"] for p in plans) == list(range(2 * per_node))
    for p in plans:
        assert p["initialize"] and p["num_processes"] == 2 * per_node
        want = [p["process_id"] % 8] if per_node == 8 else list(range(8))
        assert p["local_device_ids"] == want


def test_slurm_script_requeues_a_preempted_job(tmp_path):
    fake = _executable(tmp_path / "python", "#!/usr/bin/env bash\necho \"$@\" >> "
                       f"{tmp_path}/args.txt\nexit 75\n")
    proc = _sbatch(tmp_path, 1, str(fake))
    assert proc.returncode == 0, proc.stderr
    assert "--preempted_exit_code=75" in (tmp_path / "args.txt").read_text()
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "77"]
    fake.write_text("#!/usr/bin/env bash\nexit 1\n")
    (tmp_path / "scontrol.txt").unlink()
    assert _sbatch(tmp_path, 1, str(fake)).returncode == 1 and not (tmp_path / "scontrol.txt").exists()


def test_tpu_pod_script_starts_detached_workers():
    env = {**os.environ, "PRINT_ONLY": "1"}
    out = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "tpu1", "us-east5-a",
                          "configs/animator.py:official_v5e16", "gs://bucket/run", "--config.num_steps=10"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "--worker=all" in out and "nohup" in out and "gs://bucket/run" in out and "< /dev/null &" in out.replace(
        "\\", "")
    dry = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "tpu1", "z", "c.py:x", "gs://b/r"],
                         env={**env, "DRY_RUN": "1"}, capture_output=True, text=True, check=True).stdout
    assert "--dry_run" in dry and "nohup" not in dry


@pytest.mark.parametrize("module,variant,chips", [("motion", "pose_h100x8", 8), ("motion", "gaze_v5e16", 16),
                                                  ("animator", "official_h100x8", 8),
                                                  ("animator", "official_v5e16", 16)])
def test_per_hardware_configs_split_over_their_chips(module, variant, chips):
    import importlib

    mod = importlib.import_module(f"configs.{module}")
    c, base = mod.get_config(variant), mod.get_config(variant.split("_")[0] if module == "motion" else "official")
    assert c.batch_size % chips == 0 and c.batch_size // chips >= 2
    assert c.num_steps * c.batch_size == base.num_steps * base.batch_size  # as many samples
    if module == "motion":  # Adam's square-root rule
        assert c.task.learning_rate == pytest.approx(base.task.learning_rate * (c.batch_size / base.batch_size) ** 0.5)
