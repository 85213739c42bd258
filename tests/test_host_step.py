"""The host-driven chain (ebm_jax/chain_program.py) against the one-program step (ebm_jax/step.py),
whose numbers tests/test_step_oracle.py checks by hand.

Both run ONE step from the same hand-made state (tests/_oracle_cases.py: a partly filled buffer,
non-zero Adam moments, a rollback counted, lr_scale 0.5, a global-norm clip that acts) and must
agree field by field at float-rounding tolerances: every leaf of the new state, the metrics and
the negatives. The parameters, their EMA and Adam's moments are compared by their change in
this step, new − old for both, so that a finishing program that drops the update (or applies
it twice, or to the wrong state) fails on a difference of the size of the update itself, not
on a bound that a wrong step fits inside. Ahead-of-time compilation from abstract arguments
gives the same step, and XLA's cost analysis of the host chain's programs adds up to that of
the one program.
"""

import re

import jax
import numpy as np
import pytest

from ebm_jax import chain_program, train

from _oracle_cases import config as oracle_config, known_state

SEGMENT = 2  # with the case's K = 3: a 2-step and a 1-step program
# the leaves compared as new − old: parameters, their EMA, Adam's moments
CHANGED = re.compile(r"^\.(params|ema_params)\[|\.(mu|nu)(\[|$)")


def _config(segment: int, fashion_dir: str, **overrides):
  c = oracle_config("icd", fashion_dir)
  c.langevin.host_segment = segment
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _abstract(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s),
                      tree, shardings)


def _one_step(setup, state, batch, step_fn=None):
  """One step of `setup` from a copy of the host-side `state` (the step donates its input)."""
  out = (step_fn or setup.step_fn)(jax.device_put(state, setup.state_sharding), batch)
  return jax.device_get(out)


def _leaves(state):
  """{path: leaf} of a TrainState, e.g. ".opt_state[1][0].mu['head0']['Dense_0']['kernel']"."""
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _assert_same_step(old, got, want):
  """got and want: (state, metrics, negatives) of one step from `old`, host-driven and in one
  program."""
  (new, metrics, negatives), (exp, exp_metrics, exp_negatives) = got, want
  before, after, expected = _leaves(old), _leaves(new), _leaves(exp)
  assert after.keys() == expected.keys() == before.keys()
  changed = {m.group(1) or m.group(2) for m in map(CHANGED.search, expected) if m}
  assert changed == {"params", "ema_params", "mu", "nu"}, changed
  for name, e in expected.items():
    a, b = after[name], before[name]
    assert a.shape == e.shape and a.dtype == e.dtype, name
    if CHANGED.search(name):  # the update, compared as the change it makes
      change = e.astype(np.float64) - b
      assert np.abs(change).max() > 0, f"{name}: the one-program step does not change it"
      np.testing.assert_allclose(a.astype(np.float64) - b, change, rtol=1e-3,
                                 atol=1e-3 * np.abs(change).max(),
                                 err_msg=f"{name}: its change in this step")
      np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7, err_msg=name)
    elif e.dtype == np.uint8:  # 8-bit buffer levels: x on a level boundary may round apart
      diff = np.abs(a.astype(int) - e.astype(int))
      assert diff.max() <= 1 and (diff == 0).mean() > 0.999, name
    elif np.issubdtype(e.dtype, np.floating):
      np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7, err_msg=name)
    else:
      np.testing.assert_array_equal(a, e, err_msg=name)
  assert int(exp.step) == int(old.step) + 1
  assert metrics.keys() == exp_metrics.keys()
  for name, value in exp_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(negatives, exp_negatives, rtol=0, atol=1e-5, err_msg="x_K")


def _pair(fashion_dir, **overrides):
  """(host-driven Setup, one-program Setup, the known state, a batch) for one config."""
  host = train.Setup(_config(SEGMENT, fashion_dir, **overrides))
  one = train.Setup(_config(0, fashion_dir, **overrides))
  assert isinstance(host.step_fn, chain_program.HostChain)
  assert host.step_fn.lengths == [2, 1]
  assert not isinstance(one.step_fn, chain_program.HostChain)
  state = known_state(host, np.random.default_rng(0))
  batch = host.global_batch(next(host.stream(int(state.step))))
  return host, one, state, batch


@pytest.mark.parametrize("overrides", [{}, pytest.param({"model__conv": "spectral"},
                                                        marks=pytest.mark.slow)])
def test_host_chain_step_equals_the_one_program_step(overrides, fashion_mnist_dir):
  """One step from the known state, both ways, field by field; a second host-driven step from
  the first one's output reuses the compiled programs (its outputs keep the inputs' shapes and
  shardings)."""
  host, one, state, batch = _pair(fashion_mnist_dir, **overrides)
  got = _one_step(host, state, batch)
  _assert_same_step(state, got, _one_step(one, state, batch))
  host.step_fn(jax.device_put(got[0], host.state_sharding), batch)
  assert host.step_fn._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.slow  # the step compiled twice more, ahead of time and unrolled (~1 min)
def test_ahead_of_time_compilation_and_cost(fashion_mnist_dir):
  """The host-driven step compiled ahead of time from abstract arguments (shapes, dtypes and
  shardings, no data) computes the one-program step; its programs' FLOPs add up to those of
  the same step as one program with the chain unrolled (the same operations)."""
  host, one, state, batch = _pair(fashion_mnist_dir)
  abstract_state = _abstract(state, host.state_sharding)
  abstract_batch = _abstract(batch, host.batch_sharding)
  compiled = chain_program.compile(host.step_fn, abstract_state, abstract_batch)
  _assert_same_step(state, _one_step(host, state, batch, compiled),
                    _one_step(one, state, batch))
  unrolled = _config(0, fashion_mnist_dir)
  unrolled.langevin.unroll = unrolled.langevin.num_steps
  single = chain_program.compile(train.Setup(unrolled).step_fn, abstract_state,
                                 abstract_batch).cost_analysis()
  single = single[0] if isinstance(single, (list, tuple)) else single
  np.testing.assert_allclose(compiled.cost_analysis()["flops"], single["flops"], rtol=0.05)
