"""Gradients of each ICD loss term against hand-derived closed forms.

The energy is E_w(x) = ½ Σ_d w_d x_d² (one head), so ∇ₓE = w ⊙ x and one noiseless-gradient
Langevin step is x̂ = (1 − λw) ⊙ x̃. Values are chosen so the [0, 1] clip is inactive. The
negatives and the noised last-step inputs are produced *from w* by the sampler inside the
differentiated function, so a missing stop_gradient would change the gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.configs.default import get_config
from ebm_jax import langevin, losses
from ebm_jax import settings as settings_lib


def _settings(cfg):
  """The loss's keyword arguments `settings` and `chain` from a config."""
  typed = settings_lib.Settings.from_config(cfg)
  return {"settings": typed.loss, "chain": typed.langevin}

jax.config.update("jax_enable_x64", False)
D, B, N, M = 6, 5, 3, 7
LAM, SIGMA, K = 0.1, 0.01, 4


def energy(w, x, y=None):
  del y
  return 0.5 * jnp.sum(w * x ** 2, axis=-1, keepdims=True)


@pytest.fixture
def data():
  ks = jax.random.split(jax.random.key(0), 6)
  return dict(
      w=jax.random.uniform(ks[0], (D,), minval=0.5, maxval=1.5),
      x_pos=jax.random.uniform(ks[1], (B, D), minval=0.2, maxval=0.8),
      x0=jax.random.uniform(ks[2], (B, D), minval=0.3, maxval=0.7),
      refs=jax.random.uniform(ks[3], (M, D), minval=0.2, maxval=0.8),
      chain_key=ks[4])


def _cfg(cd=True, reg=0.0, opt=False, ent=False, all_steps=False):
  c = get_config()
  c.loss.cd, c.loss.reg_weight, c.loss.opt, c.loss.ent = cd, reg, opt, ent
  c.loss.opt_weight, c.loss.ent_weight, c.loss.ent_eps = 1.3, 0.7, 1e-6
  c.loss.kl_all_steps = all_steps
  c.langevin.step_size, c.langevin.noise_scale, c.langevin.num_steps = LAM, SIGMA, K
  c.langevin.clip_x = True
  return c


def _loss_through_sampler(cfg, d):
  """The loss as a function of w, with the sampler run from w *inside* (as a trap)."""
  def f(w):
    kernel = langevin.build_kernel(lambda x: energy(w, x), LAM)
    state, _ = langevin.run_chain(kernel, d["chain_key"], d["x0"], K, SIGMA)
    kl = losses.KLInputs(x_noised=state.x_noised[:N], x0=d["x0"][:N],
                         chain_key=d["chain_key"], labels=None)
    return losses.icd_loss(w, energy, x_pos=d["x_pos"], y_pos=None, x_neg=state.x,
                           y_neg=None, kl=kl, ent_refs=d["refs"] + 0.01 * w,
                           ent_active=jnp.array(True),
                           **_settings(cfg))
  return f


def _chain_np(d):
  """The same chain in numpy: x_k = (1 − λw)(x_{k−1} + σ ε_k); returns x_K, x̃_K, and ε."""
  w = np.asarray(d["w"], np.float64)
  x = np.asarray(d["x0"], np.float64)
  eps = []
  for k in range(K):
    e = np.asarray(langevin.row_normal(jax.random.fold_in(d["chain_key"], k), d["x0"]),
                   np.float64)
    eps.append(e)
    x_noised = x + SIGMA * e
    x = (1 - LAM * w) * x_noised
  return x, x_noised, eps


def test_cd_gradient_has_no_path_through_the_chain(data):
  (loss, aux), g = jax.value_and_grad(_loss_through_sampler(_cfg(), data), has_aux=True)(
      data["w"])
  x_neg, _, _ = _chain_np(data)
  xp = np.asarray(data["x_pos"], np.float64)
  expected = 0.5 * (xp ** 2).mean(0) - 0.5 * (x_neg ** 2).mean(0)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)
  assert float(aux["kl"]) == 0.0 and float(aux["opt"]) == 0.0


def test_regulariser_gradient(data):
  g = jax.grad(lambda w: _loss_through_sampler(_cfg(cd=False, reg=0.4), data)(w)[0])(data["w"])
  w = np.asarray(data["w"], np.float64)
  x_neg, _, _ = _chain_np(data)
  xp = np.asarray(data["x_pos"], np.float64)
  e_pos, e_neg = 0.5 * (w * xp ** 2).sum(1), 0.5 * (w * x_neg ** 2).sum(1)
  # d/dw_d (E²) = 2E · ½x_d² = E x_d²
  expected = 0.4 * ((e_pos[:, None] * xp ** 2).mean(0) + (e_neg[:, None] * x_neg ** 2).mean(0))
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)


def test_opt_gradient_flows_only_through_the_last_step(data):
  (loss, aux), g = jax.value_and_grad(
      _loss_through_sampler(_cfg(cd=False, opt=True), data), has_aux=True)(data["w"])
  w = np.asarray(data["w"], np.float64)
  x_neg, x_noised, _ = _chain_np(data)
  xt = x_noised[:N]
  x_hat = (1 - LAM * w) * xt
  # L_opt = c · mean_i ½ Σ_d w0_d x̂_id²  with w0 frozen; ∂x̂_id/∂w_d = −λ x̃_id.
  expected = 1.3 * (w * x_hat * (-LAM * xt)).mean(0)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)
  # With a direct parameter path the gradient would gain ½ mean x̂²: make sure it is absent.
  direct = 1.3 * 0.5 * (x_hat ** 2).mean(0)
  assert np.abs(np.asarray(g) - (expected + direct)).max() > 1e-3
  np.testing.assert_allclose(aux["opt"], 1.3 * (0.5 * (w * x_hat ** 2).sum(1)).mean(), rtol=1e-5)
  # numerically x̂ is the chain's own last sample (ref §1.4)
  np.testing.assert_allclose(x_hat, x_neg[:N], rtol=1e-5)


def test_entropy_gradient_flows_only_through_x_hat(data):
  (loss, aux), g = jax.value_and_grad(
      _loss_through_sampler(_cfg(cd=False, ent=True), data), has_aux=True)(data["w"])
  w = np.asarray(data["w"], np.float64)
  _, x_noised, _ = _chain_np(data)
  xt = x_noised[:N]
  x_hat = (1 - LAM * w) * xt
  refs = np.asarray(data["refs"], np.float64) + 0.01 * w  # the trap makes refs depend on w
  diff = x_hat[:, None, :] - refs[None]
  j = np.argmin((diff ** 2).sum(-1), axis=1)
  delta = x_hat - refs[j]
  d2 = (delta ** 2).sum(1) + 1e-6
  # L_ent = −c/n Σ_i ½ log d2_i  ->  ∂/∂x̂_i = −c/n · δ_i / d2_i, then ∂x̂/∂w = −λ x̃
  dl_dxhat = -0.7 / N * delta / d2[:, None]
  expected = (dl_dxhat * (-LAM * xt)).sum(0)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(aux["ent"], -0.7 * (0.5 * np.log(d2)).mean(), rtol=1e-5)


def test_entropy_is_off_until_active(data):
  cfg = _cfg(cd=False, ent=True)
  kl = losses.KLInputs(data["x0"][:N], data["x0"][:N], data["chain_key"], None)
  f = lambda w: losses.icd_loss(w, energy, x_pos=data["x_pos"], y_pos=None, x_neg=data["x0"],
                                y_neg=None, kl=kl, ent_refs=data["refs"],
                                ent_active=jnp.array(False), **_settings(cfg))[0]
  assert float(f(data["w"])) == 0.0
  assert not np.any(np.asarray(jax.grad(f)(data["w"])))


def test_opt_through_all_steps_matches_its_closed_form(data):
  (loss, aux), g = jax.value_and_grad(
      _loss_through_sampler(_cfg(cd=False, opt=True, all_steps=True), data), has_aux=True)(
          data["w"])
  w = np.asarray(data["w"], np.float64)
  x_k, _, eps = _chain_np(data)
  c = 1 - LAM * w
  x0 = np.asarray(data["x0"], np.float64)[:N]
  # x_K = c^K x0 + Σ_k c^(K−k+1) σ ε_k  ->  dx_K/dw = −λ [K c^(K−1) x0 + Σ_k (K−k+1) c^(K−k) σ ε_k]
  dx = K * c ** (K - 1) * x0
  for k in range(1, K + 1):
    dx = dx + (K - k + 1) * c ** (K - k) * SIGMA * eps[k - 1][:N]
  dx = -LAM * dx
  expected = 1.3 * (w * x_k[:N] * dx).mean(0)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)
  # and it is a different gradient from the last-step truncation
  g_last = jax.grad(lambda w: _loss_through_sampler(_cfg(cd=False, opt=True), data)(w)[0])(
      data["w"])
  assert np.abs(np.asarray(g) - np.asarray(g_last)).max() > 1e-3


def test_losses_average_over_heads():
  e_pos = jnp.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
  e_neg = jnp.zeros((2, 3))
  np.testing.assert_allclose(losses.contrastive_divergence(e_pos, e_neg), 3.0)
  np.testing.assert_allclose(losses.energy_regulariser(e_pos, e_neg), (1 + 4 + 9 + 9 + 16 + 25) / 6)


def test_nearest_neighbour_distance_matches_brute_force():
  ka, kb = jax.random.split(jax.random.key(1))
  a = jax.random.uniform(ka, (9, 4, 4, 3))
  b = jax.random.uniform(kb, (11, 4, 4, 3))
  d = losses.nearest_neighbour_distance(a, b, eps=0.0)
  brute = np.sqrt(((np.asarray(a)[:, None] - np.asarray(b)[None]) ** 2).sum((2, 3, 4))).min(1)
  np.testing.assert_allclose(d, brute, rtol=1e-5)
  # a point equal to a reference: distance sqrt(eps), finite gradient
  g = jax.grad(lambda x: jnp.log(losses.nearest_neighbour_distance(x, b, 1e-8)).sum())(b[:2])
  assert np.all(np.isfinite(g))


def _multihead_energy(w, x, y=None):
  """Three heads E_h(x) = ½ c_h Σ_d w_d x_d² (B, 3): the samplers' summed energy is
  ½ (Σ c) Σ w x², the losses' mean over heads ½ mean(c) Σ w x²."""
  del y
  base = 0.5 * jnp.sum(w * x ** 2, axis=-1, keepdims=True)
  return base * jnp.array([1.0, 2.0, 0.5])


def test_multihead_kl_terms_match_their_closed_forms(data):
  """(B, 3) energies: x̂ steps along the head *sum* (c = 3.5), L_opt averages the heads
  (mean c = 7/6); both gradients in w against the hand-derived forms."""
  c_sum, c_mean = 3.5, 3.5 / 3
  x_t = np.asarray(data["x0"][:N], np.float64)  # x̃_{K−1}, inside the box after the step
  w = np.asarray(data["w"], np.float64)
  refs = np.asarray(data["refs"], np.float64)
  cfg = _cfg(cd=False, opt=True, ent=True)
  kl = losses.KLInputs(x_noised=data["x0"][:N], x0=data["x0"][:N], chain_key=data["chain_key"],
                       labels=None)

  def loss(wv):
    return losses.icd_loss(wv, _multihead_energy, x_pos=data["x_pos"], y_pos=None,
                           x_neg=data["x0"], y_neg=None, kl=kl, ent_refs=data["refs"],
                           ent_active=jnp.array(True), **_settings(cfg))

  (total, aux), g = jax.value_and_grad(loss, has_aux=True)(data["w"])
  x_hat = (1 - LAM * c_sum * w) * x_t
  assert 0 < x_hat.min() and x_hat.max() < 1  # the clip is inactive here
  # L_opt = 1.3 · mean_i ½ c_mean Σ w x̂²  (θ frozen inside E, live through x̂)
  np.testing.assert_allclose(aux["opt"], 1.3 * np.mean(0.5 * c_mean * (w * x_hat ** 2).sum(1)),
                             rtol=1e-5)
  # d/dw: 1.3 · mean_i c_mean · w ⊙ x̂ ⊙ dx̂/dw, dx̂_d/dw_d = −λ c_sum x̃_d
  g_opt = 1.3 * np.mean(c_mean * w * x_hat * (-LAM * c_sum * x_t), axis=0)
  d = np.sqrt(((x_hat[:, None] - refs[None]) ** 2).sum(-1) + 1e-6)
  j = d.argmin(1)
  np.testing.assert_allclose(aux["ent"], -0.7 * np.mean(np.log(d[np.arange(N), j])), rtol=1e-5)
  # d/dw of −0.7 mean log d_i: −0.7 mean_i (x̂_i − b_j)/d_i² ⊙ dx̂_i/dw
  g_ent = -0.7 * np.mean((x_hat - refs[j]) / d[np.arange(N), j, None] ** 2
                         * (-LAM * c_sum * x_t), axis=0)
  np.testing.assert_allclose(g, g_opt + g_ent, rtol=2e-4, atol=1e-7)


def test_box_clip_blocks_the_gradient_through_saturated_pixels():
  """x̂ = clip(x̃ − λ∇E, 0, 1): where the step leaves the box, x̂ does not move with θ, so
  L_opt's gradient through those coordinates is exactly zero."""
  w = jnp.array([0.5, 0.5, 0.5])
  x_t = jnp.array([[0.9, 0.5, 0.1]])
  cfg = _cfg(cd=False, opt=True)
  cfg.langevin.step_size = 1.0
  # E_w(x) = −Σ w_d s_d x_d with s = (+1, 0.1, −1): the step pushes x_0 above 1, x_2 below 0
  s = jnp.array([1.0, 0.1, -1.0])
  lin = lambda wv, x, y=None: -jnp.sum(wv * s * x, axis=-1, keepdims=True)
  kl = losses.KLInputs(x_noised=x_t, x0=x_t, chain_key=jax.random.key(0), labels=None)

  def l_opt(wv):
    return losses.icd_loss(wv, lin, x_pos=x_t, y_pos=None, x_neg=x_t, y_neg=None, kl=kl,
                           ent_refs=x_t, ent_active=jnp.array(False),
                           **_settings(cfg))[1]["opt"]

  g = np.asarray(jax.grad(l_opt)(w))
  # x̂ = clip(x̃ + w s) = (1, 0.55, 0); L_opt = −1.3 Σ w̄ s x̂ with w̄ frozen: only d = 1 moves
  np.testing.assert_allclose(g, [0.0, -1.3 * (0.5 * 0.1) * 0.1, 0.0], atol=1e-7)


def test_per_device_references_score_each_block_against_its_own_set():
  # x̂ rows 0-2 belong to group 0, rows 3-5 to group 1 (per-device buffers); each row's nearest
  # reference comes from its group's set only.
  x = jnp.asarray([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
  refs = jnp.asarray([[[0.5], [5.0]], [[2.0], [11.5]]])  # (G=2, m=2, D=1)
  eps = 1e-12
  d = np.array([0.5, 0.5, 1.5, 1.5, 0.5, 0.5])  # group 0 vs {0.5, 5}; group 1 vs {2, 11.5}
  np.testing.assert_allclose(losses.entropy_loss(x, refs, eps), -np.log(d).mean(), rtol=1e-5)
  shared = losses.entropy_loss(x, refs.reshape(4, 1), eps)  # one set for all: smaller distances
  assert float(shared) > float(losses.entropy_loss(x, refs, eps))
