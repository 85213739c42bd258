"""`loss.kl_all_steps=True` (the paper's Appendix A.4 ablation) in a real training step.

In this mode L_KL's sample x̂ is the chain replayed inside the loss from the chain starts x₀
with the chain's own key, differentiably in θ through all K steps, instead of one
differentiable step from x̃_{K−1}. Nothing else in the suite compiles that option inside a
training step: tests/test_losses.py checks the replay on a quadratic energy with hand-made
inputs, not the KLInputs a step builds. Here one step of the digits tiny config (K = 3,
n = kl_samples < B, a partly filled buffer, augmented chain starts, data and noise restarts) is
recomputed by hand, outside the training code, from docs/algorithm.md:

* the chain starts x₀ and the K Langevin steps written as a loop; the step's negatives, the
  KL rows' x₀ in its KLInputs, and the replay `losses.kl_sample` runs from those KLInputs must
  all equal the hand chain (its first n rows for the replay): a replay started from x̃_{K−1},
  from x_K, from the data or from the chain starts before their augmentation transition, or
  run with another key, breaks this;
* the real step (train.Setup(config).step_fn) must run end to end with finite metrics, its
  L_CD, L_reg, L_opt, L_ent and L_KL those of the hand step;
* on the same state and batch, the step's loss function with kl_all_steps=True and =False
  must give θ-gradients of L_KL that are far apart and the same gradient of L_CD; with
  `pytest -m slow`, both L_KL gradients against the hand chain differentiated through all K
  steps and through its last step only, and the real step's gradient norm against the hand
  all-steps gradient.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax import augment as augment_lib
from ebm_jax import losses, train
from ebm_jax import settings as settings_lib
from ebm_jax import step as step_lib

from _oracle_cases import hand_keys

B, N = 8, 4  # batch and KL rows (n < B: the replay runs on the first n rows only)
FILLED = 40  # items in the 64-item buffer before the step


def _config(all_steps: bool):
  c = importlib.import_module("ebm_jax.configs.digits").get_config("tiny")
  c.data.download = False
  c.train.batch_size = B
  c.langevin.num_steps = 3
  c.langevin.host_segment = 0  # the chain inside the step program
  c.langevin.step_size = 5.0
  c.langevin.noise_scale = 0.01
  c.buffer.noise_restart_prob = 0.3
  c.buffer.data_prob = 0.3
  c.loss.kl_samples = N
  c.loss.ent_min_buffer = FILLED  # active once this step's add lands
  c.loss.kl_all_steps = all_steps
  c.seed = 5
  return c


def _known_state(setup, rng: np.random.Generator):
  """A partly filled buffer (so chain starts are buffer draws and L_ent is on), at step 7."""
  state = jax.device_get(setup.init_state())
  buf = state.buffer
  data = np.zeros(buf.data.shape, np.uint8)
  data[:FILLED] = rng.integers(0, 256, (FILLED,) + buf.data.shape[1:], dtype=np.uint8)
  return state.replace(step=np.int32(7),
                       buffer=buf._replace(data=data, size=np.int32(FILLED),
                                           seen=np.int32(FILLED)))


def _hand(config, model, info, s, batch):
  """The step's inputs to its loss, recomputed by hand: x⁺, x₀, the chain, the buffer add and
  the entropy references drawn after it, and the loss terms as functions of θ."""
  lc, bc, lo = config.langevin, config.buffer, config.loss
  (k_deq, k_draw, k_aug, k_restart, k_noise, k_chain, k_add, k_refs,
   k_refs_aug) = hand_keys(config.seed, s)
  images = np.asarray(batch["image"], np.float32)
  x_pos = (images + np.asarray(jax.random.uniform(k_deq, images.shape))) / info.levels

  def energy(p, x):
    return model.apply({"params": p, **s.model_state}, x, None)

  def draw(data, size, k, n):  # uniform with replacement over the filled slots, dequantised
    k_idx, k_u = jax.random.split(k)
    idx = np.asarray(jax.random.randint(k_idx, (n,), 0, max(int(size), 1)))
    items = np.asarray(data)[idx].astype(np.float32)
    return (items + np.asarray(jax.random.uniform(k_u, items.shape))) / 256.0

  transition = augment_lib.make_transition(config.augment)
  augment = jax.jit(lambda k, x: augment_lib.augment_batch(transition, k, x))
  x0 = np.asarray(augment(k_aug, draw(s.buffer.data, s.buffer.size, k_draw, B)))
  from_data = np.asarray(jax.random.uniform(jax.random.fold_in(k_restart, 1), (B,)))
  x0 = np.where((from_data < bc.data_prob)[:, None, None, None], x_pos, x0)
  restart = np.asarray(jax.random.uniform(k_restart, (B,))) < bc.noise_restart_prob
  noise = np.asarray(jax.random.uniform(k_noise, x0.shape, minval=bc.noise_range[0],
                                        maxval=bc.noise_range[1]))
  x0 = np.where(restart[:, None, None, None], noise, x0)

  grad_x = jax.grad(lambda p, x: energy(p, x).sum(), argnums=1)

  def chain(p, x):
    """K steps x̃ = x + σε, x' = clip(x̃ − λ∇ₓΣE_p(x̃), 0, 1), row i's noise from
    fold_in(fold_in(k_chain, k), i); returns (x_K, x̃_{K−1}), differentiable in p."""
    x_tilde = x
    for k in range(lc.num_steps):
      k_step = jax.random.fold_in(k_chain, k)
      eps = jax.vmap(lambda i, k=k_step: jax.random.normal(jax.random.fold_in(k, i),
                                                           x.shape[1:]))(jnp.arange(len(x)))
      x_tilde = x + lc.noise_scale * eps
      x = jnp.clip(x_tilde - lc.step_size * grad_x(p, x_tilde), 0.0, 1.0)
    return x, x_tilde

  x_k, x_tilde = (np.asarray(a) for a in jax.jit(chain)(s.params, jnp.asarray(x0)))

  # the add: the buffer is filling (seen + B <= capacity), so Algorithm R writes slots in order
  data = np.array(s.buffer.data)
  data[FILLED:FILLED + B] = np.clip(np.floor(np.clip(x_k, 0, 1) * 256.0), 0, 255)
  refs = np.asarray(augment(k_refs_aug, draw(data, FILLED + B, k_refs, lo.ent_num_refs)))
  refs = jnp.asarray(refs)

  def kl_terms(p, x_hat):
    d2 = jnp.sum((x_hat.reshape(N, 1, -1) - refs.reshape(1, len(refs), -1)) ** 2, -1)
    opt = lo.opt_weight * energy(jax.lax.stop_gradient(p), x_hat).mean()
    ent = -lo.ent_weight * jnp.log(jnp.sqrt(d2 + lo.ent_eps).min(1)).mean()
    return opt, ent

  def terms(p, all_steps: bool):
    e_pos, e_neg = energy(p, x_pos), energy(p, jnp.asarray(x_k))
    if all_steps:  # x̂ = the chain from x₀ with θ live at every step
      x_hat = chain(p, jnp.asarray(x0[:N]))[0]
    else:  # x̂ = one differentiable step from sg(x̃_{K−1})
      x_t = jnp.asarray(x_tilde[:N])
      x_hat = jnp.clip(x_t - lc.step_size * grad_x(p, x_t), 0.0, 1.0)
    opt, ent = kl_terms(p, x_hat)
    return {"cd": e_pos.mean() - e_neg.mean(),
            "reg": lo.reg_weight * ((e_pos ** 2).mean() + (e_neg ** 2).mean()),
            "opt": opt, "ent": ent, "kl": opt + ent}

  def values(p):  # the terms' values: in either mode x̂ is numerically x_K's first n rows
    e_pos, e_neg = energy(p, x_pos), energy(p, jnp.asarray(x_k))
    opt, ent = kl_terms(p, jnp.asarray(x_k[:N]))
    return {"cd": e_pos.mean() - e_neg.mean(),
            "reg": lo.reg_weight * ((e_pos ** 2).mean() + (e_neg ** 2).mean()),
            "opt": opt, "ent": ent, "kl": opt + ent}

  return dict(x0=x0, x_k=x_k, x_tilde=x_tilde, restart=restart, from_data=from_data,
              terms=terms, values=values, energy=energy)


def _grads(terms_fn, params, names=("cd", "reg", "kl")):
  """θ-gradients of the named terms of terms_fn(params) -> dict, in one program, and of their
  sum as "total"."""
  grads = jax.jit(lambda p: {n: jax.grad(lambda q, n=n: terms_fn(q)[n])(p) for n in names})(
      params)
  return {**grads, "total": jax.tree.map(lambda *g: sum(g), *grads.values())}


def _flat(tree):
  return np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(tree)])


def _rel(a, b):
  a, b = _flat(a), _flat(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def case():
  """The step's config, set-up, state, batch, its negative phase, and the hand recomputation."""
  config = _config(all_steps=True)
  setup = train.Setup(config)
  state = _known_state(setup, np.random.default_rng(0))
  batch = jax.device_get(setup.global_batch(next(setup.stream(int(state.step)))))
  hand = _hand(config, setup.model, setup.info, state, batch)
  neg = jax.jit(step_lib.make_negative_phase(config, setup.model, setup.info))(state, batch)
  return dict(config=config, setup=setup, state=state, batch=batch, hand=hand, neg=neg)


@pytest.fixture(scope="module")
def step_out(case):
  """The real step's (new state, metrics, negatives), through train.Setup(config).step_fn."""
  setup = case["setup"]
  return jax.device_get(setup.step_fn(jax.device_put(case["state"], setup.state_sharding),
                                      case["batch"]))


@pytest.fixture(scope="module")
def lib_grads(case):
  """∇θ of L_CD and L_KL by the step's loss function, with kl_all_steps=True and =False on the
  same negative phase."""
  def terms(cfg):
    loss_fn = step_lib.make_loss_fn(cfg, case["setup"].model, case["neg"])
    return lambda p: loss_fn(p)[1]

  params = case["state"].params
  return {"all": _grads(terms(case["config"]), params, ("cd", "kl")),
          "last": _grads(terms(_config(all_steps=False)), params, ("cd", "kl"))}


def test_the_replay_reproduces_the_chain_and_the_step_runs(case, step_out):
  hand, neg, state = case["hand"], case["neg"], case["state"]
  # what makes the replay's start visible: some KL rows start from buffer draws, others from
  # data or noise, and the chain moves them
  drawn = ~(hand["restart"] | (hand["from_data"] < case["config"].buffer.data_prob))[:N]
  assert 0 < drawn.sum() < N
  assert np.abs(hand["x_k"] - hand["x0"]).max() > 1e-2
  assert np.abs(hand["x_k"] - hand["x_tilde"]).max() > 1e-2

  np.testing.assert_allclose(np.asarray(neg.x_neg), hand["x_k"], atol=2e-5, err_msg="x_K")
  np.testing.assert_allclose(np.asarray(neg.kl.x0), hand["x0"][:N], atol=1e-6,
                             err_msg="KLInputs.x0: the KL rows' chain starts")
  settings = settings_lib.Settings.from_config(case["config"])
  assert settings.loss.kl_all_steps
  energy = lambda p, x, y: hand["energy"](p, x)
  replay = jax.jit(lambda p, kl: losses.kl_sample(energy, p, kl, settings.langevin, True))
  np.testing.assert_allclose(np.asarray(replay(state.params, neg.kl)), hand["x_k"][:N],
                             atol=2e-5, err_msg="the replayed x̂ against the chain's x_K rows")

  # the real step, end to end: finite, its chain and its loss terms those of the hand step
  _, metrics, negatives = step_out
  assert bool(metrics["finite"])
  assert all(np.isfinite(float(v)) for v in metrics.values())
  np.testing.assert_allclose(negatives, hand["x_k"][:len(negatives)], atol=2e-5)
  want = jax.tree.map(float, jax.jit(hand["values"])(state.params))
  assert float(metrics["entropy_active"]) == 1.0 and want["ent"] != 0.0
  for name in ("cd", "reg", "opt", "ent", "kl"):
    np.testing.assert_allclose(float(metrics[f"loss_{name}"]), want[name], rtol=1e-4, atol=1e-6,
                               err_msg=name)


def test_the_kl_gradient_goes_through_all_steps_and_the_cd_gradient_does_not(lib_grads):
  got_all, got_last = lib_grads["all"], lib_grads["last"]
  apart = _rel(got_all["kl"], got_last["kl"])
  assert apart > 0.5, f"kl_all_steps changed ∇θ L_KL by {apart:.3g} (relative) only"
  np.testing.assert_allclose(_flat(got_all["cd"]), _flat(got_last["cd"]), rtol=1e-6, atol=1e-9,
                             err_msg="∇θ L_CD depends on kl_all_steps")


@pytest.mark.slow  # second derivatives through a hand-written chain: their own compiles
def test_the_kl_gradients_equal_the_hand_derivatives(case, step_out, lib_grads):
  hand, params = case["hand"], case["state"].params
  want_all = _grads(lambda p: hand["terms"](p, True), params)
  want_last = _grads(lambda p: hand["terms"](p, False), params, ("kl",))
  assert _rel(want_all["kl"], want_last["kl"]) > 0.5  # the two gradients are far apart
  for what, got, want, tol in (
      ("∇θ L_KL through all K steps", lib_grads["all"]["kl"], want_all["kl"], 1e-3),
      ("∇θ L_KL through the last step", lib_grads["last"]["kl"], want_last["kl"], 1e-3),
      ("∇θ L_CD", lib_grads["all"]["cd"], want_all["cd"], 1e-4)):
    error = _rel(got, want)
    assert error < tol, f"{what}: relative error {error:.3g}"
  # the real step's gradient is the all-steps one
  np.testing.assert_allclose(float(step_out[1]["grad_norm"]),
                             np.linalg.norm(_flat(want_all["total"])), rtol=1e-3)
