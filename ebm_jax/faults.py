"""Fault injection for tests (config.debug.*), the one module that reads config.debug. Each
fault reaches production code through one seam:

  batch_fault(config)         the step (step.make_phase_parts) replaces a step's data batch
  signal_after_step(...)      the training loop: the process signals itself after a step
  save_fault(config, step)    checkpoint.Checkpointer.save: a SIGKILL inside a checkpoint write,
                              between writing its items and committing it

With every debug field at its default each seam is a no-op: nothing enters the compiled step,
no signal is sent and no save is touched.
"""

import os
import signal
from typing import Callable

import jax
import jax.numpy as jnp


def batch_fault(config) -> Callable[[object, jax.Array], jax.Array]:
  """debug.inject_nan_at_step: fault(state, x_pos) replaces the dequantised data batch of that
  step by debug.inject_value (NaN: a non-finite trip; e.g. 1e6: an energy-bound trip) while
  fewer than debug.inject_nan_times rollbacks have happened. The identity when off."""
  d = config.debug
  if d.inject_nan_at_step <= 0:
    return lambda state, x_pos: x_pos

  def fault(state, x_pos):
    hit = (state.step + 1 == d.inject_nan_at_step) & (state.recoveries < d.inject_nan_times)
    return jnp.where(hit, d.inject_value, x_pos)
  return fault


def signal_after_step(config, step: int, state, wait_for_saves: Callable[[], None]) -> None:
  """debug.signal_at_step: after that step the process (debug.signal_process, -1: every one)
  sends itself SIG{debug.signal}. Before a SIGKILL every checkpoint already started is let
  finish, so the kill lands at a known point: the latest complete checkpoint is the last one
  written before this step."""
  d = config.debug
  if not d.signal_at_step or step != d.signal_at_step:
    return
  if d.signal_process not in (-1, jax.process_index()):
    return
  jax.block_until_ready(state)
  if d.signal == "KILL":
    wait_for_saves()
  os.kill(os.getpid(), getattr(signal, f"SIG{d.signal}"))


def save_fault(config, step: int) -> Callable[[], None] | None:
  """debug.kill_in_save_at_step: for that step's checkpoint save, the function the Checkpointer
  runs in orbax's writer thread after the save's items are written and before the checkpoint
  is committed; it SIGKILLs the process, so the kill lands mid-write every time. None for
  every other save (and without a config)."""
  at = config.debug.kill_in_save_at_step if config is not None else 0
  if at <= 0 or step != at:
    return None
  return lambda: os.kill(os.getpid(), signal.SIGKILL)
