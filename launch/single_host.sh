#!/usr/bin/env bash
# Train on one machine: all its local devices (GPUs, TPU cores or the CPU) in one process.
#   launch/single_host.sh configs/mouth_regressor.py:tiny workdir/mouth [--config.batch_size=64 ...]
set -euo pipefail
CONFIG=${1:?usage: $0 CONFIG WORKDIR [--config.x=y ...]}
WORKDIR=${2:?usage: $0 CONFIG WORKDIR [--config.x=y ...]}
shift 2
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" launch/train.py --config="$CONFIG" --workdir="$WORKDIR" "$@"
