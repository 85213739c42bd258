#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (e.g. a v4-32: 4 hosts), the same command on every worker;
# jax.distributed.initialize() finds the other hosts by itself on Cloud TPU.
#
#   bash launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [--config.field=value ...]
#   e.g. bash launch/tpu_vm.sh my-v4-32 us-central2-b configs/celebahq.py gs://bucket/runs/celebahq
#
# 1. copies this repository (without .venv, runs/) to ~/ebm_jax on every worker;
# 2. creates ~/ebm_jax/.venv there with `pip install -e ".[tpu]"` unless it exists already;
# 3. runs `python -m ebm_jax.main ... --distributed` on all workers at once.
# Idempotent: rerunning it resumes training from the latest checkpoint in WORKDIR, which must be
# a gs:// path (or a file system all workers share). DRY_RUN=1 prints the gcloud commands only.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
tpu=$1
zone=$2
config=$3
workdir=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
remote_dir=ebm_jax

run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$1"
}

# 1. code: a tarball of the tracked and untracked (not ignored) files
archive=$(mktemp -t ebm_jax.XXXXXX.tar.gz)
trap 'rm -f "$archive"' EXIT
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -czf "$archive")
run gcloud compute tpus tpu-vm scp "$archive" "$tpu:ebm_jax.tar.gz" --zone="$zone" --worker=all
ssh_all "mkdir -p $remote_dir && tar -xzf ebm_jax.tar.gz -C $remote_dir"

# 2. environment, once per worker
ssh_all "cd $remote_dir && { [ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'; }; }"

# 3. the same training command on every worker
overrides=""
for arg in "$@"; do
  overrides+=" $(printf '%q' "$arg")"
done
ssh_all "cd $remote_dir && .venv/bin/python -m ebm_jax.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir") --distributed$overrides"
