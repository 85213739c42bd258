"""The host-driven chain (langevin.host_segment > 0, ebm_jax/chain_program.py) inside the training
loop, where it is the CPU default for every chain longer than 10 steps: tests/test_host_step.py
checks one HostChain against the one-program step, but only the loop restores a state from a
checkpoint, rolls back after a divergence and builds a new HostChain for each run. Guarded:

  - resume is bitwise exact: 4 steps in one go equal 2 steps and a resumed run to 4 (the keys of
    every program derive from the restored state's step alone, nothing kept in the host object);
  - a divergence-guard trip (debug.* fault injection, energy bound) rolls back to the last
    checkpoint: the state the step gets after the rollback is that checkpoint's, bit for bit,
    with the rollback counted, and the run finishes with finite values;
  - no recompilation after a restore or a rollback: every call of the step gets arguments of one
    signature (shapes, dtypes, shardings, weak types) in every run, the HostChain compiles its
    programs once (`_cache_size()`), and jax traces, lowers and compiles the step's programs
    (start, segment_fn, finish) during the first call only (jax.monitoring's duration events).
    A restored state with other shardings or dtypes would compile the whole step a second time.

Both tests share one config (the fault at step 5 too, never reached in the resume test), so
they compile the same programs and the later runs load them from the persistent cache.
"""

import os
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest

from ebm_jax import chain_program, state as state_lib, train
from ebm_jax.metrics import METRICS_FILE, read_jsonl
from test_train import tiny_config

FAULT_STEP = 5
# The step's programs as jax names them in its trace / lowering / compilation events.
PROGRAMS = {"start", "segment_fn", "finish"}
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def _config(num_steps: int):
  return tiny_config(
      "digits", train__num_steps=num_steps, train__checkpoint_every=2, train__log_every=1,
      # a constant rate: a cosine one decays over num_steps, which the 2-step run changes
      optim__schedule="constant",
      langevin__num_steps=3, langevin__host_segment=2,  # segments of 2 and 1 steps
      # A finite but huge data batch at FAULT_STEP trips the energy bound (the tiny net's |E+|
      # is below 1 on images, a few hundred on pixels of 1e6: tests/test_survival.py).
      debug__inject_nan_at_step=FAULT_STEP, debug__inject_value=1e6,
      guard__max_abs_energy=100.0)


def _signature(tree) -> tuple:
  return tuple((a.shape, a.dtype, a.sharding, a.aval.weak_type) for a in jax.tree.leaves(tree))


class Call(NamedTuple):
  inputs: Any  # a host copy of the state the call was given
  signature: tuple  # of (state, batch)
  events: list  # (event, program) compile events during the call


class WatchedStep:
  """A Setup's step function, called as the loop calls it, recording every call."""

  def __init__(self, step_fn, events: list):
    self.inner, self.events, self.calls = step_fn, events, []

  def __call__(self, state, batch):
    before = len(self.events)
    call = Call(jax.device_get(state), _signature((state, batch)), [])  # before it is donated
    out = self.inner(state, batch)
    call.events.extend(self.events[before:])
    self.calls.append(call)
    return out


@pytest.fixture
def runs(monkeypatch):
  """The WatchedStep of every Setup that train_and_evaluate builds (one per run), in order."""
  made, events = [], []

  def listener(event, duration, **kwargs):
    del duration
    name = str(kwargs.get("fun_name", ""))  # "start" when traced, "jit(start)" after
    name = name[len("jit("):-1] if name.startswith("jit(") else name
    if event in COMPILE_EVENTS and name in PROGRAMS:
      events.append((event, name))

  class Watched(train.Setup):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.step_fn = WatchedStep(self.step_fn, events)
      made.append(self.step_fn)

  monkeypatch.setattr(train, "Setup", Watched)
  jax.monitoring.register_event_duration_secs_listener(listener)
  yield made
  jax.monitoring.unregister_event_duration_listener(listener)


def _assert_compiled_once(run: WatchedStep, signature: tuple):
  """One compilation of the step in this run, during its first call, for `signature`."""
  assert isinstance(run.inner, chain_program.HostChain) and run.inner.lengths == [2, 1]
  first, *later = run.calls
  # the instrument sees the programs being made (a new HostChain traces them again)
  assert {(e, name) for e in COMPILE_EVENTS for name in PROGRAMS} == set(first.events)
  for call in later:  # nothing traced, lowered or compiled again ...
    assert not call.events, (int(call.inputs.step), call.events)
  assert run.inner._cache_size() == 1  # pylint: disable=protected-access
  for call in later:  # ... because every call had the arguments of the first
    assert call.signature == first.signature, (int(call.inputs.step), call.signature)
  assert first.signature == signature


def _same(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


STATE_FIELDS = ("step", "params", "ema_params", "opt_state", "buffer", "model_state")


def test_resume_on_the_host_chain_is_bitwise_exact_and_compiles_once(tmp_path, runs):
  full_dir, split_dir = str(tmp_path / "full"), str(tmp_path / "split")
  full = jax.device_get(train.train_and_evaluate(_config(4), full_dir))
  train.train_and_evaluate(_config(2), split_dir)  # stands in for an interruption at step 2
  resumed = jax.device_get(train.train_and_evaluate(_config(4), split_dir))
  assert [[int(c.inputs.step) for c in r.calls] for r in runs] == [[0, 1, 2, 3], [0, 1], [2, 3]]
  assert int(full.step) == int(resumed.step) == 4 and int(resumed.recoveries) == 0
  assert [f for f in STATE_FIELDS if not _same(getattr(full, f), getattr(resumed, f))] == []
  strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]
  assert strip(read_jsonl(os.path.join(full_dir, METRICS_FILE))) == strip(
      read_jsonl(os.path.join(split_dir, METRICS_FILE)))
  assert not _same(full.params, runs[0].calls[0].inputs.params)  # it trained
  # The restored state (the resumed run's first call) has the signature of a fresh one.
  for run in runs:
    _assert_compiled_once(run, runs[0].calls[0].signature)


def test_rollback_on_the_host_chain_restores_the_last_checkpoint(tmp_path, runs):
  state = train.train_and_evaluate(_config(6), str(tmp_path))
  (run,) = runs
  # FAULT_STEP trips at once (patience 1, a log step): back to the checkpoint of step 4
  assert [(int(c.inputs.step), int(c.inputs.recoveries)) for c in run.calls] == [
      (0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (4, 1), (5, 1)]
  rows = read_jsonl(os.path.join(tmp_path, METRICS_FILE))
  events = [r for r in rows if "event" in r]
  assert [(e["event"], e["cause"], e["trip_step"], e["resumed_from_step"]) for e in events] == [
      ("rollback", state_lib.GUARD_CAUSES[state_lib.GUARD_ENERGY], FAULT_STEP, 4)]
  # the step after the rollback starts from the state of step 4, bit for bit, one rollback on
  before, after = run.calls[4].inputs, run.calls[5].inputs
  assert [f for f in STATE_FIELDS if not _same(getattr(before, f), getattr(after, f))] == []
  assert int(after.guard.cause) == state_lib.GUARD_OK and float(after.lr_scale) == 1.0
  # the run finished as one run, every value finite
  state = jax.device_get(state)
  assert int(state.step) == 6 and int(state.recoveries) == 1
  assert int(state.guard.cause) == state_lib.GUARD_OK
  assert [r["step"] for r in rows if "event" not in r] == list(range(1, 7))
  assert all(np.isfinite(r[k]) for r in rows if "event" not in r
             for k in ("loss", "energy_pos", "energy_neg", "grad_norm"))
  for field in ("params", "ema_params", "opt_state"):
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(getattr(state, field))), field
  # the restored state kept the signature: no second compilation after the rollback
  _assert_compiled_once(run, run.calls[0].signature)
