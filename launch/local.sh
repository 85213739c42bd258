#!/usr/bin/env bash
# Train on one host with every accelerator it has (or its CPU), resuming if WORKDIR holds
# checkpoints. Usage:
#   bash launch/local.sh CONFIG[:VARIANT] WORKDIR [--config.field=value ...]
# e.g. bash launch/local.sh configs/digits.py:tiny runs/digits_tiny
# Set PYTHON to choose the interpreter (default: python3 from the active environment).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m ebm_jax.main --config="$config" --workdir="$workdir" "$@"
