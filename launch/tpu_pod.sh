#!/usr/bin/env bash
# A Cloud TPU VM slice: start the same command on all workers, detached (nohup), so a dropped
# ssh does not stop the run; each worker logs to ~/gohd-train.log.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/animator.py:official_v5e16 gs://bucket/runs/anim [--config.x=y ...]
#   DRY_RUN=1 launch/tpu_pod.sh ...   # each worker prints its multi-process plan (one JSON line)
#   PRINT_ONLY=1 launch/tpu_pod.sh ...  # print the gcloud command, run nothing
# The repo must be checked out (and `make venv` run) at $REPO_DIR on every worker. The workdir
# must be storage every worker sees: a gs:// bucket (checkpoints, metrics and TensorBoard go
# there) or a mounted filesystem. launch/train.py finds the slice's workers itself (GCE metadata)
# and calls jax.distributed.initialize(). Follow a run:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=0 --command 'tail -f ~/gohd-train.log'
# Rerun the same command after a preemption or maintenance event: it resumes.
set -euo pipefail
TPU=${1:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]}
ZONE=${2:?}; CONFIG=${3:?}; WORKDIR=${4:?}
shift 4
REPO_DIR=${REPO_DIR:-gohd-jax}
ARGS=$(printf ' %q' --config="$CONFIG" --workdir="$WORKDIR" "$@")
if [[ -n "${DRY_RUN:-}" ]]; then
  REMOTE="cd $REPO_DIR && .venv/bin/python launch/train.py$ARGS --dry_run"
else
  REMOTE="cd $REPO_DIR && nohup .venv/bin/python launch/train.py$ARGS >> ~/gohd-train.log 2>&1 < /dev/null &"
fi
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$REMOTE")
if [[ -n "${PRINT_ONLY:-}" ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
"${CMD[@]}"
