"""The gradient decomposition of ebm_jax.analysis against the training loss's own gradient."""

import os

import jax
import numpy as np
import optax
import pytest

from ebm_jax.configs import digits
from ebm_jax import analysis, step, train
from ebm_jax.metrics import METRICS_FILE, read_jsonl


def _state_and_batch(**loss):
  """A state after one step (so the buffer is full enough for L_ent) and the next batch."""
  config = digits.get_config("tiny")
  for k, v in loss.items():
    config.loss[k] = v
  setup = train.Setup(config)
  stream = setup.stream(0)
  state, _, _ = setup.step_fn(setup.init_state(), setup.global_batch(next(stream)))
  return config, setup, state, setup.global_batch(next(stream))


@pytest.fixture(scope="module")
def full():
  config, setup, state, batch = _state_and_batch()
  grads = jax.jit(lambda s, b: analysis.term_gradients(config, setup.model, setup.info, s, b))(
      state, batch)
  return config, setup, state, batch, grads


def test_terms_add_up_to_the_training_gradient(full):
  config, setup, state, batch, grads = full
  neg = jax.jit(step.make_negative_phase(config, setup.model, setup.info))(state, batch)
  assert bool(neg.ent_active)  # all four terms are live
  expected = jax.jit(lambda p, n: jax.grad(
      lambda q: step.make_loss_fn(config, setup.model, n)(q)[0])(p))(state.params, neg)
  for got, want in zip(jax.tree.leaves(grads["total"]), jax.tree.leaves(expected)):
    # separate backward passes sum in another order: float32 rounding, not more
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  for term in analysis.TERMS:
    assert float(optax.tree_utils.tree_norm(grads[term])) > 0, term
  kl = jax.tree.map(lambda a, b: a + b, grads["opt"], grads["ent"])
  for got, want in zip(jax.tree.leaves(grads["kl"]), jax.tree.leaves(kl)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_summary_norms_and_cosine_are_consistent(full):
  *_, grads = full
  out = jax.device_get(analysis.summarize(grads))
  names = [k[len(analysis.PREFIX):] for k in out]
  groups = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/norm_total")})
  assert "head0/Dense_0" in groups and "head0/ResBlock_0" in groups
  # group norms are a partition of the global norm
  for term in ("cd", "kl", "total"):
    squares = sum(out[f"{analysis.PREFIX}{g}/norm_{term}"] ** 2 for g in groups)
    np.testing.assert_allclose(squares, out[f"{analysis.PREFIX}norm_{term}"] ** 2, rtol=1e-4)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  a, b = flat(grads["kl"]), flat(grads["cd"])
  np.testing.assert_allclose(out[f"{analysis.PREFIX}cos_kl_cd"],
                             a @ b / np.linalg.norm(a) / np.linalg.norm(b), rtol=1e-4)


@pytest.mark.slow  # its own step and decomposition compiles
def test_kl_gradient_is_zero_when_the_kl_term_is_off():
  config, setup, state, batch = _state_and_batch(opt=False, ent=False)
  out = jax.device_get(setup.decompose_fn(state, batch))
  assert out[f"{analysis.PREFIX}norm_kl"] == 0.0
  assert out[f"{analysis.PREFIX}norm_cd"] > 0.0


def test_training_logs_the_decomposition(digits_workdir):
  """The shared run (tests/conftest.py) logs every 5 steps and decomposes every 10."""
  rows = read_jsonl(os.path.join(digits_workdir, METRICS_FILE))
  logged = [r["step"] for r in rows if f"{analysis.PREFIX}norm_kl" in r]
  assert logged == [10, 20, 30, 40]  # every 10 steps (40 is also the last)
  assert [r["step"] for r in rows] == list(range(5, 41, 5))  # merged into the step's row
