"""The divergence guard: an on-device check in every step (`update`), and the host-side policy
that decides between rolling back and giving up (`Recovery`).

The check never makes the step wait for the host: the first cause it sees sticks in the state
until the loop reads it at a log or checkpoint step and rolls back (train._rollback).
"""

import jax
import jax.numpy as jnp

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
  """Host side of the divergence guard: decides between rollback and giving up."""

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
