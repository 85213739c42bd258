"""loss.chunks: the step's loss and θ-gradient over equal strided chunks of the rows.

Checked against the whole batch at once (chunks = 1), on one parameter tree and one negative
phase: the loss, every term, the per-row energies in row order and the gradient agree within
float rounding, conditional and with per-device L_ent groups; XLA's memory analysis of the
compiled gradient keeps a fraction of the temporary memory (what the option is for); the rows
each chunk takes are the documented ones; settings it cannot serve are refused by name.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax import chunks as chunks_lib
from ebm_jax import config_lib, losses, models, step
from ebm_jax import settings as settings_lib
from ebm_jax.configs.default import get_config
from ebm_jax.errors import UserError


def _settings(chunks: int, features: int = 8):
  c = get_config()
  c.model.name, c.model.features, c.model.multiscale = "mnist", features, False
  c.loss.chunks = chunks
  return settings_lib.Settings.from_config(c)


def _negative_phase(key, shape, b, classes=0, groups=0) -> step.NegativePhase:
  """What make_loss_fn reads of a negative phase: data, negatives, KL inputs, references."""
  k = jax.random.split(key, 6)
  u = lambda kk, n: jax.random.uniform(kk, (n, *shape))
  y = jax.nn.one_hot(jax.random.randint(k[5], (b,), 0, classes), classes) if classes else None
  kl = losses.KLInputs(x_noised=u(k[2], b), x0=u(k[2], b), chain_key=k[3], labels=y)
  refs = u(k[4], 24) if not groups else u(k[4], groups * 12).reshape(groups, 12, *shape)
  return step.NegativePhase(x_pos=u(k[0], b), labels=y, x_neg=u(k[1], b), kl=kl,
                            ent_refs=refs, ent_active=jnp.bool_(True), model_state={},
                            buffer=None, restart=None, infos=None)


def _grad_fn(chunks, neg, features=8):
  settings = _settings(chunks, features)
  model = models.make_model(settings.model, neg.x_pos.shape[1:], 0 if neg.labels is None
                            else neg.labels.shape[-1])
  return model, jax.jit(lambda p: chunks_lib.value_and_grad(
      lambda n: step.make_loss_fn(settings, model, n), neg, p, settings.loss.chunks))


def test_chunks_are_strided_and_keep_each_devices_rows_in_order():
  x = jnp.arange(16)
  c = chunks_lib.chunk_rows(x, 4)
  np.testing.assert_array_equal(c[1], [1, 5, 9, 13])
  np.testing.assert_array_equal(chunks_lib.unchunk_rows(c), x)
  # 16 rows on 2 devices (rows 0-7, 8-15): every chunk takes 2 rows of each, device 0's first
  assert all(list(np.asarray(row) // 8) == [0, 0, 1, 1] for row in c)


@pytest.mark.parametrize("classes, groups, chunks", [
    (10, 2, 4),  # conditional, per-device L_ent groups: chunks of one row per group
    pytest.param(0, 0, 2, marks=pytest.mark.slow),
])
def test_chunked_loss_and_gradient_equal_the_whole_batch(classes, groups, chunks):
  neg = _negative_phase(jax.random.key(1), (8, 8, 1), 8, classes, groups)
  model, whole = _grad_fn(1, neg)
  params = model.init(jax.random.key(0), neg.x_pos[:1],
                      None if neg.labels is None else neg.labels[:1])["params"]
  (loss, aux), grads = whole(params)
  for term in ("cd", "reg", "opt", "ent"):  # every term on, so none passes by being absent
    assert float(aux[term]) != 0.0, term
  flat = lambda g: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g)])
  (loss_c, aux_c), grads_c = _grad_fn(chunks, neg)[1](params)
  np.testing.assert_allclose(loss_c, loss, rtol=1e-5, atol=1e-6)
  for k in aux:
    np.testing.assert_allclose(aux_c[k], aux[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # float32 rounding in another summation order, which the net's instance norms of 2×2 and
  # 1×1 maps amplify: measured 3e-5 of the gradient's norm here (1e-4 in one kernel), and
  # < 1e-6 with the net computing in float64. A chunk weighted wrongly, a row in the wrong
  # chunk or another group's references are off by O(1). Biases before a norm have
  # gradients that are zero up to rounding: they get 1e-6 of the whole.
  total = np.linalg.norm(flat(grads))
  for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads)):
    assert np.linalg.norm(a - b) <= 5e-4 * np.linalg.norm(b) + 1e-6 * total, (a.shape, chunks)
  assert np.linalg.norm(flat(grads_c) - flat(grads)) < 2e-4 * total, chunks


def test_chunks_divide_the_gradients_temporary_memory():
  neg = _negative_phase(jax.random.key(1), (28, 28, 1), 64)
  temp = {}
  for chunks in (1, 4):
    model, fn = _grad_fn(chunks, neg, features=16)
    params = jax.eval_shape(model.init, jax.random.key(0), neg.x_pos[:1])["params"]
    temp[chunks] = fn.lower(params).compile().memory_analysis().temp_size_in_bytes
  assert temp[4] < 0.4 * temp[1], temp


@pytest.mark.parametrize("fields, match", [
    ({"train.batch_size": 12, "loss.chunks": 8}, "divide each device's rows: 12 of the batch"),
    ({"loss.kl_samples": 4, "loss.chunks": 8}, "KL rows"),
    ({"loss.chunks": 0}, "at least 1"),
    ({"loss.chunks": 2, "loss.kl_all_steps": True}, "kl_all_steps"),
])
def test_chunks_it_cannot_serve_are_refused(fields, match):
  c = get_config()
  c.train.batch_size = 16
  for k, v in fields.items():
    section, name = k.split(".")
    c[section][name] = v
  with pytest.raises(UserError, match=match):
    config_lib.validate(c)
