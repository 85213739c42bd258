"""Training that survives faults, injected on tiny configs (no sleeps): divergence rollbacks,
SIGTERM/SIGINT preemption, SIGKILL, truncated checkpoints."""

import glob
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.configs import digits
from ebm_jax import checkpoint, cli, errors, guard, state as state_lib, train
from ebm_jax.metrics import METRICS_FILE, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 6


def _config(**overrides):
  c = digits.get_config("tiny")
  # Some runs here stop by a smaller num_steps and resume with NUM_STEPS; a cosine rate decays
  # over num_steps, so their comparisons with an uninterrupted run need a constant rate (and
  # _main's processes the same config).
  c.optim.schedule = "constant"
  c.train.num_steps = NUM_STEPS
  c.train.checkpoint_every = 2
  c.train.log_every = 1
  for dotted, value in overrides.items():
    group, field = dotted.split("__")
    c[group][field] = value
  return c


def _flags(**overrides):
  return [f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference: the same run with no fault, in one go."""
  return jax.device_get(train.train_and_evaluate(
      _config(), str(tmp_path_factory.mktemp("uninterrupted"))))


def _assert_same_state(a, b):
  for field in ("step", "params", "ema_params", "opt_state", "buffer", "model_state"):
    la, lb = jax.tree.leaves(getattr(a, field)), jax.tree.leaves(getattr(b, field))
    assert len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb)), field


def _final_state(workdir):
  """The state of the latest checkpoint in workdir."""
  setup = train.Setup(_config())
  ckpt = checkpoint.Checkpointer(workdir, _config(), setup.info)
  state = ckpt.restore_state(setup.abstract_state, setup.state_sharding)
  ckpt.close()
  return jax.device_get(state)


def _main(workdir, *flags):
  proc = subprocess.run(
      [sys.executable, "-m", "ebm_jax.main", "--config=configs/digits.py:tiny",
       f"--workdir={workdir}", *_flags(train__num_steps=NUM_STEPS, train__checkpoint_every=2,
                                      train__log_every=1, optim__schedule="constant"), *flags],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  return proc.returncode, proc.stdout + proc.stderr


def _scalar_steps(workdir):
  return [r["step"] for r in read_jsonl(os.path.join(workdir, METRICS_FILE)) if "event" not in r]


# ----------------------------------------------------------------------- divergence guard


def test_guard_update_counts_consecutive_steps_and_keeps_the_first_cause():
  cfg = _config(guard__max_abs_energy=1.0, guard__max_energy_gap=5.0, guard__patience=2).guard
  g = state_lib.guard_init()

  def step(g, s, e_pos, e_neg=0.0, finite=True):
    m = {"energy_pos": jnp.float32(e_pos), "energy_neg": jnp.float32(e_neg),
         "energy_gap": jnp.float32(e_pos - e_neg), "finite": jnp.bool_(finite)}
    return guard.update(g, m, jnp.int32(s), cfg)

  g = step(g, 1, 2.0)  # |E+| > 1 once: not yet (patience 2)
  assert int(g.over_count) == 1 and int(g.cause) == state_lib.GUARD_OK
  g = step(g, 2, 0.5)  # back in bounds resets the count
  assert int(g.over_count) == 0
  g = step(step(g, 3, 0.5, -6.0), 4, 0.5, -6.0)  # |gap| > 5 twice in a row: trips at step 4
  assert (int(g.cause), int(g.trip_step)) == (state_lib.GUARD_ENERGY, 4)
  g = step(g, 5, 0.0, finite=False)  # a later NaN does not overwrite the first cause
  assert (int(g.cause), int(g.trip_step)) == (state_lib.GUARD_ENERGY, 4)
  g = step(state_lib.guard_init(), 7, float("nan"))  # a NaN energy trips at once
  assert (int(g.cause), int(g.trip_step)) == (state_lib.GUARD_NONFINITE, 7)


def test_guard_window_forgets_old_divergences():
  """guard.max_recoveries counts only the trips within guard.window steps of the newest."""
  cfg = _config(guard__max_recoveries=1, guard__window=10).guard
  spaced = guard.Recovery(cfg)
  for trip in (5, 20, 35):  # 15 steps apart: each alone in its window
    spaced.check(state_lib.GUARD_ENERGY, trip, trip - 1, "ckpts")
  close = guard.Recovery(cfg)
  close.check(state_lib.GUARD_ENERGY, 5, 4, "ckpts")
  with pytest.raises(errors.DivergenceError, match="2 divergences within guard.window=10"):
    close.check(state_lib.GUARD_ENERGY, 12, 11, "ckpts")


def test_energy_bound_trip_rolls_back_once_and_the_run_finishes(tmp_path, uninterrupted):
  """A finite but huge data batch at step 4 trips the energy bound, not the NaN check: the
  tiny net gives |E⁺| of a few hundred to pixels of 1e6 and below 1 to images, so a bound of
  100 separates them. The loop rolls back to step 2 and finishes the run."""
  cfg = _config(debug__inject_nan_at_step=4, debug__inject_value=1e6,
                guard__max_abs_energy=100.0)
  state = train.train_and_evaluate(cfg, str(tmp_path))
  assert int(state.step) == NUM_STEPS and int(state.recoveries) == 1
  rows = read_jsonl(os.path.join(tmp_path, METRICS_FILE))
  events = [r for r in rows if "event" in r]
  assert len(events) == 1
  assert events[0]["event"] == "rollback", events
  assert events[0]["cause"] == state_lib.GUARD_CAUSES[state_lib.GUARD_ENERGY], events
  assert (events[0]["trip_step"], events[0]["resumed_from_step"]) == (4, 2)
  # the scalar rows read as one run, every value finite
  assert _scalar_steps(tmp_path) == list(range(1, NUM_STEPS + 1))
  assert all(np.isfinite(r["loss"]) for r in rows if "event" not in r)
  params = jax.tree.leaves(jax.device_get(state.params))
  assert all(np.all(np.isfinite(p)) for p in params)
  # steps after the rollback drew new random numbers (the rollback counter is in the keys)
  assert not np.array_equal(np.asarray(state.buffer.data), np.asarray(uninterrupted.buffer.data))


@pytest.mark.slow  # its own compile (fault value baked in); the step oracle checks lr_scale
def test_rollback_scales_the_learning_rate(tmp_path):
  state = train.train_and_evaluate(
      _config(debug__inject_nan_at_step=3, guard__lr_factor=0.5), str(tmp_path))
  assert int(state.step) == NUM_STEPS and float(state.lr_scale) == 0.5


@pytest.mark.slow  # a training process with three rollbacks
def test_repeated_divergence_gives_up_with_the_documented_message(tmp_path):
  code, out = _main(tmp_path, *_flags(debug__inject_nan_at_step=3, debug__inject_nan_times=99,
                                      guard__max_recoveries=2))
  assert code == cli.EXIT_DIVERGED, out[-3000:]
  assert "training stopped:" in out and "giving up" in out and "guard.max_recoveries=2" in out
  assert "last good checkpoint is step 2" in out and "Traceback" not in out
  events = [r for r in read_jsonl(os.path.join(tmp_path, METRICS_FILE)) if "event" in r]
  assert len(events) == 2  # two rollbacks, the third divergence stops the run


@pytest.mark.slow  # its own compile
def test_guard_off_stops_at_the_first_divergence(tmp_path):
  with pytest.raises(errors.DivergenceError, match="guard.enabled=False"):
    train.train_and_evaluate(_config(debug__inject_nan_at_step=3, guard__enabled=False),
                             str(tmp_path))


# ----------------------------------------------------------------------- preemption


@pytest.mark.slow  # two training processes per signal
@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
def test_signal_checkpoints_exits_zero_and_resume_is_exact(signal_name, tmp_path,
                                                           uninterrupted):
  code, out = _main(tmp_path, *_flags(debug__signal_at_step=3, debug__signal=signal_name))
  assert code == 0, out[-3000:]
  assert f"Stopped at step 3 by SIG{signal_name}" in out
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.manager.all_steps() == [2, 3]  # the step it was on was written at once
  ckpt.close()
  assert not glob.glob(str(tmp_path / "samples" / "*"))  # no end-of-run work when stopped
  code, out = _main(tmp_path)  # the same command continues
  assert code == 0 and "Resumed from step 3" in out, out[-3000:]
  _assert_same_state(_final_state(str(tmp_path)), uninterrupted)
  assert _scalar_steps(tmp_path) == list(range(1, NUM_STEPS + 1))


@pytest.mark.slow  # the quickstart's net (3.7 min of the default suite under -O0)
def test_the_host_keeps_at_most_one_step_in_flight(tmp_path, monkeypatch):
  """A SIGTERM is honoured after the step in flight, so the host must not dispatch steps far
  ahead of the device (JAX's asynchronous dispatch lets it run up to log_every steps ahead:
  a SIGTERM to the Fashion-MNIST CPU run then took 63 s to end it, 5 s with the wait). When
  step t is dispatched, the outputs of every step before t - 1 must already be computed."""
  lagging, outputs = [], []

  class Recording(train.Setup):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      inner = self.step_fn

      def step_fn(state, batch):
        lagging.append(sum(not m.is_ready() for m in outputs[:-1]))
        out = inner(state, batch)
        outputs.append(out[1]["loss"])
        return out
      self.step_fn = step_fn

  monkeypatch.setattr(train, "Setup", Recording)
  # The quickstart's net, not the tiny one: XLA:CPU runs a program as cheap as the tiny step
  # inline, so there the host never gets ahead (measured: without the wait, the quickstart step
  # had 8 steps in flight by step 11; the tiny step none).
  config = digits.get_config()
  config.train.num_steps = config.train.log_every = config.train.checkpoint_every = 12
  config.train.eval_every = 0
  config.sample.num, config.sample.num_blocks, config.sample.final_steps = 4, 1, 0  # cheap end
  train.train_and_evaluate(config, str(tmp_path))
  assert len(lagging) == 12 and max(lagging) == 0, lagging


@pytest.mark.slow  # two training processes
def test_sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_one(
    tmp_path, uninterrupted):
  """The kill lands inside the asynchronous write of step 4's checkpoint (after its arrays,
  before the commit: debug.kill_in_save_at_step), every time; the rerun resumes from step 2,
  the last complete checkpoint, and ends where an uninterrupted run ends."""
  code, _ = _main(tmp_path, *_flags(debug__kill_in_save_at_step=4))
  assert code == -9
  left = os.listdir(tmp_path / "checkpoints")
  assert "2" in left and "4" not in left, left  # step 4 was never committed
  code, out = _main(tmp_path)
  assert code == 0, out[-3000:]
  assert "Resumed from step 2" in out, out[-3000:]
  _assert_same_state(_final_state(str(tmp_path)), uninterrupted)
  assert _scalar_steps(tmp_path) == list(range(1, NUM_STEPS + 1))


# ----------------------------------------------------------------------- damaged checkpoints


def _truncate_state_item(workdir, step):
  """Cuts every data file of a checkpoint's `state` item to half its size."""
  files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**"),
                                recursive=True)
           if os.path.isfile(f) and os.path.getsize(f) > 64]
  assert files
  for f in files:
    with open(f, "r+b") as handle:
      handle.truncate(os.path.getsize(f) // 2)


@pytest.mark.slow  # two training runs
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted,
                                                                    caplog):
  train.train_and_evaluate(_config(train__num_steps=4), str(tmp_path))
  _truncate_state_item(str(tmp_path), 4)
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(_config(), str(tmp_path))
  said = caplog.text
  assert "checkpoint at step 4 could not be read" in said and "resumes from step 2" in said
  assert glob.glob(str(tmp_path / "corrupt_checkpoints" / "4_*"))
  _assert_same_state(jax.device_get(state), uninterrupted)
  # the corrupt step was written again, readable this time
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.manager.all_steps() == [4, 6]
  ckpt.close()


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  train.train_and_evaluate(_config(train__num_steps=2), str(tmp_path))
  _truncate_state_item(str(tmp_path), 2)
  code, out = _main(tmp_path)
  assert code == cli.EXIT_USER_ERROR, out[-3000:]
  assert "none of the checkpoints" in out and "Traceback" not in out
  assert os.path.isdir(tmp_path / "checkpoints" / "2")  # nothing moved, nothing overwritten
