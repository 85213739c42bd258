"""The EMA of the parameters: its weight on the initial parameters after t updates against the
closed forms (decayᵗ; with the warm-up 9!·t!/(t + 9)!), and the warm-up inside a real
training step (EMA₁ = 0.1·EMA₀ + 0.9·θ₁ at step 0)."""

import math

import jax
import numpy as np
import optax
import pytest

from ebm_jax import step as step_lib
from ebm_jax import train
from ebm_jax.configs import digits


@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("t", [1, 10, 100, 1000])
def test_the_initial_weights_share_after_t_updates(warmup, t):
  # EMA₀ = 1 (the initial parameters), θ = 0 afterwards: EMA_t is the initial weights' share
  ema = np.float64(1.0)
  for s in range(t):
    ema = optax.incremental_update(np.float64(0.0), ema,
                                   1.0 - float(step_lib.ema_decay(s, 0.999, warmup)))
  closed = (math.factorial(9) * math.factorial(t) / math.factorial(t + 9) if warmup
            else 0.999 ** t)
  assert float(ema) == pytest.approx(closed, rel=1e-4, abs=1e-30)


def test_the_warm_up_inside_a_training_step():
  config = digits.get_config("tiny")
  config.optim.ema_warmup = True
  setup = train.Setup(config)
  state = setup.init_state()
  p0 = jax.device_get(state.params)
  new, _, _ = setup.step_fn(state, setup.global_batch(next(setup.stream(0))))
  p1, ema1 = jax.device_get((new.params, new.ema_params))
  jax.tree.map(lambda e, a, b: np.testing.assert_allclose(e, 0.1 * a + 0.9 * b, rtol=1e-5,
                                                          atol=1e-7), ema1, p0, p1)
  assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(jax.tree.leaves(p0),
                                                          jax.tree.leaves(p1)))
