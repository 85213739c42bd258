"""The divergence guard: an on-device check in every step (`update`), and the host-side
rollback policy (`Recovery`): when to roll back or give up, to which state, with which
learning-rate scale, and the event that records it.

The check never makes the step wait for the host: the first cause it sees sticks in the state
until the loop reads it at a log or checkpoint step and calls `Recovery.roll_back`.
"""

import jax
import jax.numpy as jnp
from absl import logging

from ebm_jax import settings as settings_lib
from ebm_jax import state as state_lib
from ebm_jax.errors import DivergenceError


def update(guard: state_lib.GuardState, metrics: dict[str, jax.Array], step: jax.Array,
           cfg: settings_lib.GuardSettings) -> state_lib.GuardState:
  """The on-device divergence check of one step. The first cause seen sticks until the loop
  reads it (at log / checkpoint steps) and rolls back, so no step goes unchecked and the
  step itself never waits for the host."""
  finite = (metrics["finite"] & jnp.isfinite(metrics["energy_pos"])
            & jnp.isfinite(metrics["energy_neg"]))
  over = ((jnp.abs(metrics["energy_pos"]) > cfg.max_abs_energy)
          | (jnp.abs(metrics["energy_gap"]) > cfg.max_energy_gap))
  over_count = jnp.where(over, guard.over_count + 1, 0).astype(jnp.int32)
  cause = jnp.where(~finite, state_lib.GUARD_NONFINITE,
                    jnp.where(over_count >= cfg.patience, state_lib.GUARD_ENERGY,
                              state_lib.GUARD_OK)).astype(jnp.int32)
  first = (guard.cause == state_lib.GUARD_OK) & (cause != state_lib.GUARD_OK)
  return state_lib.GuardState(over_count=over_count,
                              cause=jnp.where(first, cause, guard.cause),
                              trip_step=jnp.where(first, step, guard.trip_step))


class Recovery:
  """Host side of the divergence guard: decides between rollback and giving up, and rolls
  back."""

  def __init__(self, cfg: settings_lib.GuardSettings):
    self.cfg = cfg
    self.trips: list[int] = []  # steps at which the guard tripped, this process

  def check(self, cause: int, trip_step: int, last_good: int, directory: str) -> None:
    """Raises DivergenceError when the guard is off or the rollback budget is spent."""
    what = state_lib.GUARD_CAUSES[cause]
    self.trips = [s for s in self.trips if s > trip_step - self.cfg.window] + [trip_step]
    if not self.cfg.enabled:
      raise DivergenceError(
          f"{what} at step {trip_step}; the divergence guard is off (guard.enabled=False). The "
          f"last good checkpoint is step {last_good} in {directory}.", trip_step, what)
    if len(self.trips) > self.cfg.max_recoveries:
      raise DivergenceError(
          f"{what} at step {trip_step}: {len(self.trips)} divergences within "
          f"guard.window={self.cfg.window} steps (guard.max_recoveries="
          f"{self.cfg.max_recoveries}); giving up. The last good checkpoint is step {last_good} "
          f"in {directory}. Lower optim.learning_rate or langevin.step_size, set "
          "guard.lr_factor below 1, or raise guard.max_recoveries.", trip_step, what)

  def roll_back(self, seen: state_lib.GuardState, step: int, bad: state_lib.TrainState, ckpt,
                setup, writer) -> state_lib.TrainState:
    """After the guard's host copy `seen` showed a trip at `step`: raises DivergenceError
    (`check`), or returns the state to go on from, with the rollback logged and recorded as an
    event row (writer.rollback: later scalar rows dropped).

    The state is the latest complete checkpoint (each is written with a clean guard, so a good
    one) or, with none, the run's fresh state, with one more rollback counted (every later step
    draws new random numbers), the learning-rate scale times guard.lr_factor and a clean
    guard. `ckpt` is the run's Checkpointer, `setup` its train.Setup, `writer` its
    MetricWriter."""
    cause, trip = int(seen.cause), int(seen.trip_step)
    ckpt.wait()
    self.check(cause, trip, ckpt.latest_step() or 0, ckpt.directory)
    state = ckpt.restore_state(setup.abstract_state, setup.state_sharding, quiet=True)
    if state is None:
      state = setup.fresh_state()
    where = setup.state_sharding
    state = state.replace(
        recoveries=jax.device_put(bad.recoveries + 1, where.recoveries),
        lr_scale=jax.device_put(bad.lr_scale * self.cfg.lr_factor, where.lr_scale),
        guard=jax.device_put(state_lib.guard_init(), where.guard))
    event = {"event": "rollback", "cause": state_lib.GUARD_CAUSES[cause], "trip_step": trip,
             "detected_step": step, "resumed_from_step": int(state.step),
             "recoveries": int(state.recoveries), "lr_scale": float(state.lr_scale)}
    logging.warning("Divergence guard: %s at step %d (seen at step %d); rolled back to step %d, "
                    "rollback %d, learning-rate scale %g.", event["cause"], trip, step,
                    event["resumed_from_step"], event["recoveries"], event["lr_scale"])
    writer.rollback(int(state.step), event)
    return state
