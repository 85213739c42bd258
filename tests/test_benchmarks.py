"""Smoke tests of the benchmark scripts on a tiny config: they run and print one JSON object
with the documented keys (the timings themselves are measured by the scripts, not here)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import forced_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = {"device_kind", "device_count", "platform", "compile_s", "achieved_tflops", "mfu",
          "peak_tflops", "peak_rss_mib", "versions", "batch_size", "langevin_steps",
          "langevin_steps_per_s", "precision", "cpu_model", "cpu_amx_bf16", "xla_flags"}


@pytest.mark.slow  # benchmark processes that compile FLOP-count variants
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


@pytest.mark.slow  # a benchmark process compiling a host-driven step and its FLOP variants
def test_train_step_times_the_host_chain_phases_apart(tmp_path):
  """A chain of 12 steps on CPU runs host-driven (segments of 10 and 2): the benchmark times
  its phases apart (parts_s), each as many times as the step, and they account for the step."""
  out = tmp_path / "result.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_step", "--config=configs/digits.py:tiny",
       "--config.langevin.num_steps=12", "--repeats=2", "--warmup=0", f"--out={out}"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["langevin_host_segment"] == 10
  parts = result["parts_s"]
  assert set(parts) == {"start", "chain", "finish"}
  assert all(p["n"] == 2 and 0 < p["min"] <= p["median"] <= p["max"] for p in parts.values())
  total = sum(p["median"] for p in parts.values())
  assert 0.3 * result["step_s"]["median"] < total < 3 * result["step_s"]["median"]


def test_benchmark_rejects_a_bad_config_without_traceback():
  proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step",
                         "--config=configs/digits.py:tiny", "--config.train.batch_size=0"],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 2 and "train.batch_size" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.slow  # a sweep of compiles
def test_scaling_benchmark_fits_exponents_and_reports_memory(tmp_path):
  out = tmp_path / "scaling.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.scaling", "--config=configs/digits.py:tiny",
       "--ks=1,3", "--batches=4,8", "--kl_samples=2,4", "--ent_refs=8,32", "--repeats=2",
       "--warmup=0", f"--out={out}"], capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert set(result["by_langevin_steps"]) == {"1", "3"} and set(result["by_batch_size"]) == {
      "4", "8"}
  assert all(isinstance(result[k], float) for k in ("time_exponent_in_k",
                                                     "time_exponent_in_batch"))
  assert set(result["step_temp_mib_by_kl_samples"]) == {"2", "4"}
  # the nearest-neighbour search never holds an n x m x D tensor: its temporary memory is a
  # small fraction of one
  for case, mib in result["nn_search_temp_mib"].items():
    assert mib < 0.1 * result["nn_search_n_m_d_tensor_mib"][case], case


def test_sampler_benchmark_times_rolled_and_unrolled_segments(tmp_path):
  out = tmp_path / "sampler.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.sampler", "--config=configs/digits.py:tiny", "--num=4",
       "--steps=3", "--unrolls=1,3", "--repeats=2", "--warmup=0", f"--out={out}"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert set(result["by_unroll"]) == {"1", "3"} and result["chains"] == 4
  for row in result["by_unroll"].values():
    t = row["segment_s"]
    assert t["n"] == 2 and 0 < t["min"] <= t["median"] <= t["max"] and row["compile_s"] > 0


@pytest.mark.slow  # lowers two tiny training steps for two platforms
@pytest.mark.parametrize("name", ["cifar10", "celebahq"])
def test_train_step_exports_for_gpu_and_tpu_without_host_callbacks(name):
  import importlib  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from benchmarks import export  # pylint: disable=import-outside-toplevel
  from ebm_jax import train  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f"ebm_jax.configs.{name}").get_config("tiny")
  config.data.download = False
  with tfds.testing.mock_data(num_examples=16):
    result = export.export_step(train.Setup(config), ["cuda", "tpu"])
  assert result["platforms"] == ["cuda", "tpu"] and result["exportable"], result
  assert result["cpu_only_calls"] == []


def test_the_export_check_finds_a_host_callback():
  """The check above must be able to fail: a step with a host callback is caught."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from benchmarks import export  # pylint: disable=import-outside-toplevel

  def with_callback(x):
    return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x) + 1.0

  plain = jax.export.export(jax.jit(lambda x: x + 1.0), platforms=("cuda",))(np.ones(3, "float32"))
  assert export.custom_calls(plain.mlir_module())[1] == []
  # host callbacks cannot be exported for a platform without a host runtime: lower for cpu
  called = jax.jit(with_callback).lower(np.ones(3, "float32")).as_text()
  targets, bad = export.custom_calls(called)
  assert bad and all("callback" in t for t in bad), targets


def test_precision_benchmark_reports_bfloat16_errors_and_times(tmp_path):
  out = tmp_path / "precision.json"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.precision", "--config=configs/digits.py:tiny",
       "--repeats=2", "--warmup=0", f"--out={out}"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  for inputs in ("uniform_noise", "training_images"):
    err = result["error"][inputs]
    # bfloat16 really computes in bfloat16 (not 0), and stays near float32 on this tiny net
    # (8 significant bits: per-example gradient errors of a few per cent, measured ~8 %)
    assert 0 < err["grad_rel_l2_err"]["median"] < 0.5, err
    assert 0 < err["energy_abs_err_over_std"]["median"] < 1.0, err
    assert err["grad_cosine_min"] > 0.8, err
  for dtype in ("float32", "bfloat16"):
    assert result["forward_and_input_grad_s"][dtype]["n"] == 2 and result["compile_s"][dtype] > 0
  assert result["cpu_model"] and "bfloat16_speedup" in result


# ------------------------------------------------------------------------- the GPU check


@pytest.mark.slow  # child processes: the env probe and a pytest run
def test_gpu_check_runs_its_cheap_stages_and_writes_one_json(tmp_path):
  from benchmarks import gpu_check  # pylint: disable=import-outside-toplevel
  out = tmp_path / "check.json"
  assert gpu_check.main(["--dry_run", f"--out={out}", "--stages=env,install,tests"]) == 0
  report = json.loads(out.read_text())
  env = report["stages"]["env"]["result"]
  assert env["device_count"] >= 1 and env["backend"] and env["jax"]
  assert report["stages"]["install"]["missing"] == []  # everything is installed here
  assert report["stages"]["tests"]["counts"]["passed"] >= 1 and report["ok"]


def test_gpu_check_parses_the_benchmarks_and_the_training_run(tmp_path, monkeypatch):
  # the step and train stages with their child processes replaced by what they write
  from benchmarks import gpu_check  # pylint: disable=import-outside-toplevel
  seen = []

  def fake_run(cmd, limit, env=None):
    seen.append(cmd)
    flags = dict(a.split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    if "benchmarks.train_step" in cmd:
      with open(flags["--out"], "w") as f:
        json.dump({"config": flags["--config"], "step_s": {"median": 0.5}, "mfu": 0.3}, f)
    else:
      with open(os.path.join(flags["--workdir"], "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 150, "perf/steps_per_sec": 2.0}) + "\n")
        f.write(json.dumps({"step": 300, "perf/steps_per_sec": 4.0,
                            "quality/frechet": 12.5}) + "\n")
    return {"cmd": " ".join(cmd), "rc": 0, "seconds": 1.0, "tail": ""}

  monkeypatch.setattr(gpu_check, "run", fake_run)
  out = tmp_path / "check.json"
  assert gpu_check.main([f"--out={out}", "--stages=steps,train"]) == 0
  report = json.loads(out.read_text())["stages"]
  assert report["steps"]["cifar10"]["result"]["config"] == "configs/cifar10.py"
  assert report["steps"]["celebahq"]["result"]["step_s"]["median"] == 0.5
  assert report["train"]["steps_per_sec"] == 4.0
  assert report["train"]["quality"] == {"quality/frechet": 12.5}
  celeba = [c for c in seen if "--config=configs/celebahq.py" in c][0]
  assert "--config.train.batch_size=128" in celeba  # the paper's 128 per device, one device
  assert "--config.data.name=shapes" in celeba  # no tfds on the GPU machine
  assert gpu_check.pytest_counts("3 passed, 1 skipped in 2.0s") == {"passed": 3, "skipped": 1}


@pytest.mark.slow  # the whole dry run: benchmarks and a training run of the digits, on the CPU
def test_gpu_check_dry_run_of_every_stage(tmp_path):
  out = tmp_path / "check.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry_run",
                         f"--out={out}", "--budget_s=1500"], capture_output=True, text=True,
                        timeout=1600, cwd=ROOT)
  report = json.loads(out.read_text())
  assert proc.returncode == 0 and report["ok"], json.dumps(report)[-3000:]
  assert report["stages"]["steps"]["cifar10"]["result"]["step_s"]["median"] > 0
  assert report["stages"]["train"]["quality"]["quality/classes"] >= 1


@pytest.mark.slow  # an 8-device process compiling the step on one and on eight devices
def test_no_work_is_replicated_over_eight_devices(tmp_path):
  """benchmarks.export's FLOP check: the step's per-device program on 8 devices counts the
  FLOPs of the 1-device program at the same per-device batch, within 3 % (replicated work,
  such as the KL rows' double backward on every device, shows as a ratio well above 1)."""
  out = tmp_path / "export.json"
  env = forced_devices_env(8)
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.export", "--config=configs/digits.py:tiny",
       "--platforms=cuda", "--memory=false", "--estimate=false", f"--out={out}"],
      capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  check = json.loads(out.read_text())["flop_check"]
  assert check["devices"] == 8 and check["flops_one_device"] > 0, check
  assert 0.97 < check["ratio"] < 1.03, check
