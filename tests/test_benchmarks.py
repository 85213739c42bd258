"""Smoke tests of the benchmark scripts on a tiny config: they run and print one JSON object
with the documented keys (the timings themselves are measured by the scripts, not here)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = {"device_kind", "device_count", "platform", "compile_s", "achieved_tflops", "mfu",
          "peak_tflops", "peak_rss_mib", "versions", "batch_size", "langevin_steps",
          "langevin_steps_per_s", "precision"}


@pytest.mark.parametrize("script,keys,timing", [
    ("train_step", {"step_s", "images_per_s", "flops_per_step", "num_params", "loss_finite"},
     "step_s"),
    ("langevin", {"chain_s", "seconds_per_langevin_step", "flops_per_chain"}, "chain_s"),
])
def test_benchmark_prints_json_with_the_documented_keys(script, keys, timing, tmp_path):
  out = tmp_path / "result.json"
  proc = subprocess.run(
      [sys.executable, "-m", f"benchmarks.{script}", "--config=configs/digits.py:tiny",
       "--repeats=2", "--warmup=0", f"--out={out}"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert result == json.loads(out.read_text())
  assert COMMON | keys <= set(result), (COMMON | keys) - set(result)
  assert result["device_count"] >= 1 and result["compile_s"] > 0
  t = result[timing]
  assert t["n"] == 2 and 0 < t["min"] <= t["median"] <= t["max"]
  assert result["flops_per_step" if script == "train_step" else "flops_per_chain"] > 0
  assert result["mfu"] is None  # no known peak for a CPU


def test_benchmark_rejects_a_bad_config_without_traceback():
  proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step",
                         "--config=configs/digits.py:tiny", "--config.train.batch_size=0"],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 2 and "train.batch_size" in proc.stderr
  assert "Traceback" not in proc.stderr
