"""Beyond one process: two processes on JAX's distributed runtime (loopback, CPU devices, gloo)
train exactly what one process with the same devices trains; mixed precision."""

import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.configs import default, digits
from ebm_jax import checkpoint, models, train
from ebm_jax.metrics import METRICS_FILE, read_jsonl

from conftest import forced_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
# optim.eps = 1: Adam's first updates are ±lr·sign(g) with the default eps, so a gradient
# component that is zero up to rounding may flip sign between device layouts; eps = 1 makes the
# update a smooth function of the gradient (tests/sharding_check.py explains it at length).
FLAGS = ["--config=configs/digits.py:tiny", f"--config.train.num_steps={STEPS}",
         "--config.optim.eps=1.0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _restore(workdir):
  """The latest checkpoint of workdir, restored in this one-process, one-device test process."""
  config = digits.get_config("tiny")
  config.train.num_steps, config.optim.eps = STEPS, 1.0
  setup = train.Setup(config, jax.devices()[:1])
  ckpt = checkpoint.Checkpointer(str(workdir), config, setup.info)
  state = ckpt.restore_state(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  return jax.device_get(state)


@pytest.mark.slow  # three training processes
def test_two_processes_train_what_one_process_with_four_devices_trains(tmp_path):
  multi, single = tmp_path / "multi", tmp_path / "single"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "ebm_jax.main", *FLAGS, f"--workdir={multi}", "--distributed",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=forced_devices_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outs = []
  for p in procs:
    outs.append(p.communicate(timeout=900)[0])
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  one = subprocess.run([sys.executable, "-m", "ebm_jax.main", *FLAGS, f"--workdir={single}"],
                       env=forced_devices_env(4), cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
  assert one.returncode == 0, one.stderr[-3000:]

  assert "on 2 process(es)" in outs[0] and outs[0].count("CpuDevice(") == 4  # 2 x 2 devices
  assert f"step {STEPS}/{STEPS}" in outs[0] and f"step {STEPS}/{STEPS}" not in outs[1]
  # only process 0 writes metrics: each step has exactly one row
  assert [r["step"] for r in read_jsonl(multi / METRICS_FILE)] == list(range(1, STEPS + 1))

  # the 2-process checkpoint restores in a 1-process run, and equals the 4-device run
  a, b = _restore(multi), _restore(single)
  assert int(a.step) == int(b.step) == STEPS
  for name in ("params", "ema_params", "opt_state", "model_state"):
    for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5,
                                 err_msg=name)
  # buffer levels: a value on a rounding boundary may land one 8-bit level apart
  la, lb = np.asarray(a.buffer.data).astype(int), np.asarray(b.buffer.data).astype(int)
  assert np.abs(la - lb).max() <= 1 and np.mean(la != lb) < 0.01


@pytest.mark.slow  # the CIFAR net compiled in bfloat16
def test_bfloat16_compute_keeps_float32_params_and_energies():
  cfg = default.get_config().model
  cfg.features = 16
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 3))
  f32 = models.make_model(cfg, (32, 32, 3))
  cfg.dtype = "bfloat16"
  bf16 = models.make_model(cfg, (32, 32, 3))
  variables = f32.init(jax.random.key(1), x)
  assert bf16.init(jax.random.key(1), x)["params"]["head0"]["Conv_0"]["kernel"].dtype == jnp.float32
  e32, e16 = f32.apply(variables, x), bf16.apply(variables, x)
  assert e16.dtype == jnp.float32 and e16.shape == (8, 3)
  # Stated tolerance: bfloat16 keeps 8 significant bits (relative rounding 2^-9 per op); through
  # the 3 heads' ~20 layers the energies stay within 5 % of their float32 spread.
  np.testing.assert_allclose(e16, e32, atol=0.05 * float(np.ptp(e32)) + 1e-3)
  assert not np.array_equal(e16, e32)  # the switch really changes the compute dtype
  g16 = jax.grad(lambda z: bf16.apply(variables, z).sum())(x)
  assert g16.dtype == jnp.float32  # the Langevin update stays in float32


@pytest.mark.slow  # a bfloat16 step compile
def test_bfloat16_train_step_runs_with_float32_state():
  config = digits.get_config("tiny")
  config.model.dtype = "bfloat16"
  setup = train.Setup(config)
  state = setup.init_state()
  state, metrics, _ = setup.step_fn(state, setup.global_batch(next(setup.stream(0))))
  assert bool(metrics["finite"])
  for leaf in jax.tree.leaves((state.params, state.ema_params, state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  assert state.buffer.data.dtype == jnp.uint8


@pytest.mark.slow  # four training processes
def test_a_lost_process_stops_the_other_in_one_line_and_a_rerun_resumes(tmp_path):
  """Process 1 of 2 is SIGKILLed after step 3 (debug.signal_process); process 0, waiting in a
  collective that will never finish, must end within a bounded time with exit code 4 and one
  line naming the lost process (ebm_jax.distributed.PeerWatch), not hang or abort in C++.
  Rerunning both processes resumes from the last complete checkpoint and finishes."""
  steps, heartbeat = 6, 20
  common = ["--config=configs/digits.py:tiny", f"--config.train.num_steps={steps}",
            "--config.train.checkpoint_every=2", f"--workdir={tmp_path}", "--distributed",
            "--num_processes=2", f"--heartbeat_timeout={heartbeat}"]

  def launch(extra):
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "ebm_jax.main", *common, *extra,
         f"--coordinator_address=127.0.0.1:{port}", f"--process_id={i}"],
        env=forced_devices_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for i in range(2)]

  procs = launch(["--config.debug.signal_at_step=3", "--config.debug.signal=KILL",
                  "--config.debug.signal_process=1"])
  out1 = procs[1].communicate(timeout=900)[0]
  killed_at = time.monotonic()
  out0 = procs[0].communicate(timeout=300)[0]
  waited = time.monotonic() - killed_at
  assert procs[1].returncode == -9, out1[-3000:]
  assert procs[0].returncode == 4, out0[-3000:]
  # bounded: the watch gives up after heartbeat / 2 of silence (here 10 s), checked every second
  assert waited < heartbeat, (waited, out0[-3000:])
  errors = [line for line in out0.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "process 1 of 2" in errors[0] and "rerun" in errors[0], out0[-3000:]
  assert "Traceback" not in out0 and "Check failure" not in out0, out0[-3000:]
  assert "step 3/" in out0  # process 0 got past the step process 1 was killed after

  procs = launch([])  # the same command, without the fault, in both processes
  outs = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert "Resumed from step 2" in outs[0], outs[0][-3000:]
  assert f"step {steps}/{steps}" in outs[0]
  assert [r["step"] for r in read_jsonl(tmp_path / METRICS_FILE)
          if "step" in r and "event" not in r][-1] == steps
