#!/usr/bin/env bash
# A TPU pod slice: run the same command on all workers.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/mouth_regressor.py:base gs://bucket/runs/mouth [--config.x=y ...]
# The repo must be checked out (and `make venv` run) at the same path on every worker,
# and the workdir must be shared (a gs:// path or a mounted filesystem).
set -euo pipefail
TPU=${1:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]}
ZONE=${2:?}; CONFIG=${3:?}; WORKDIR=${4:?}
shift 4
REPO_DIR=${REPO_DIR:-gohd-jax}
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && .venv/bin/python launch/train.py --config=$CONFIG --workdir=$WORKDIR $*"
