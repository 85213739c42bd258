"""The host-driven chain (ebm_jax/host_step.py) against the one-program step: same numbers,
same state, one compilation per program, and XLA's cost analysis of its parts adding up to the
one program's. The one-program step itself is checked by hand in tests/test_step_oracle.py."""

import jax
import numpy as np
import pytest

from ebm_jax import host_step, train
from test_train import tiny_config


def _config(segment: int, **overrides):
  c = tiny_config("digits", **overrides)
  c.langevin.num_steps = 3  # with segments of 2: a 2-step and a 1-step program
  c.langevin.host_segment = segment
  c.buffer.noise_restart_prob = 0.3
  c.buffer.data_prob = 0.3  # chains that start at this step's data
  c.loss.kl_samples = 4  # L_KL on the first rows only
  c.loss.ent_min_buffer = 8  # the entropy term acts from the second step
  c.optim.schedule = "constant"
  return c


def _run(config, num_steps: int = 3):
  setup = train.Setup(config)
  state, stream, metrics = setup.init_state(), setup.stream(0), []
  for _ in range(num_steps):
    state, m, negatives = setup.step_fn(state, setup.global_batch(next(stream)))
    metrics.append(m)
  return setup, jax.device_get((state, metrics, negatives))


def test_resolve_segment():
  assert host_step.resolve_segment(-1, 40, "cpu") == 10
  assert host_step.resolve_segment(-1, 11, "cpu") == 10
  assert host_step.resolve_segment(-1, 10, "cpu") == 0  # short chains: inside the step
  assert host_step.resolve_segment(-1, 40, "gpu") == 0
  assert host_step.resolve_segment(-1, 40, "tpu") == 0
  assert host_step.resolve_segment(0, 40, "cpu") == 0
  assert host_step.resolve_segment(8, 40, "gpu") == 8
  assert host_step.resolve_segment(5, 3, "cpu") == 3  # never longer than the chain


@pytest.mark.parametrize("overrides", [{}, pytest.param({"model__conv": "spectral"},
                                                        marks=pytest.mark.slow)])
def test_host_chain_step_equals_the_one_program_step(overrides):
  setup, (state, metrics, negatives) = _run(_config(2, **overrides))
  assert isinstance(setup.step_fn, host_step.HostChainStep)
  assert setup.step_fn.lengths == [2, 1]
  assert setup.step_fn._cache_size() == 1  # pylint: disable=protected-access
  one, (want, want_metrics, want_negatives) = _run(_config(0, **overrides))
  assert not isinstance(one.step_fn, host_step.HostChainStep)
  assert int(state.step) == int(want.step) == 3
  assert float(want_metrics[-1]["loss_ent"]) != 0.0 and float(want_metrics[0]["restart_fraction"]) > 0
  # Three steps apart, float rounding (another fusion of the same operations) has grown through
  # the chains and Adam's division by √v (elements with tiny gradients): the one-step
  # comparison against the oracle (tests/test_step_oracle.py, both ways) is the tight one.
  np.testing.assert_allclose(negatives, want_negatives, atol=2e-3)
  # Adam moves a parameter by about the learning rate per step whatever its gradient's size, so
  # a rounding-level gradient of the other sign can part the runs by 2·lr per step, no more.
  bound = 2 * setup.config.optim.learning_rate * 3
  for name in ("params", "ema_params"):
    for a, b in zip(jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(want, name))):
      np.testing.assert_allclose(a, b, atol=bound, err_msg=name)
  diff = np.abs(state.buffer.data.astype(int) - want.buffer.data.astype(int))  # 8-bit levels
  assert diff.max() <= 2 and (diff == 0).mean() > 0.99
  np.testing.assert_array_equal(state.buffer.size, want.buffer.size)
  for got, exp in zip(metrics, want_metrics):
    for name, value in exp.items():
      np.testing.assert_allclose(got[name], value, rtol=2e-3, atol=1e-5, err_msg=name)


def test_ahead_of_time_compilation_and_cost():
  config = _config(2)
  setup = train.Setup(config)
  state = setup.init_state()
  batch = setup.global_batch(next(setup.stream(0)))
  compiled = setup.step_fn.lower(state, batch).compile()
  want = jax.device_get(setup.step_fn(setup.init_state(), batch))
  got = jax.device_get(compiled(state, batch))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-5, atol=1e-6)
  # the parts' FLOPs add up to those of the same step as one program, chain unrolled
  one = _config(0)
  one.langevin.unroll = one.langevin.num_steps
  single = train.Setup(one).step_fn.lower(setup.init_state(), batch).compile().cost_analysis()
  single = single[0] if isinstance(single, (list, tuple)) else single
  np.testing.assert_allclose(compiled.cost_analysis()["flops"], single["flops"], rtol=0.05)
