"""Langevin kernel and chains against closed forms on quadratic energies."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax import langevin, sampling
from ebm_jax import settings as settings_lib


def gaussian_energy(mu, s):
  """E(x) = ‖x − μ‖² / (2 s²) per sample, one head: the density N(μ, s² I)."""
  return lambda x: (0.5 * jnp.sum((x - mu) ** 2, axis=-1) / s ** 2)[:, None]


def test_stationary_mean_and_variance_of_textbook_langevin():
  # Textbook coupling σ² = 2λ, no clipping. With noise added before the gradient, one step is
  # x' = (1 − a)(x + σε) + aμ with a = λ/s², whose stationary law is N(μ, v) with
  # v = (1 − a)² σ² / (1 − (1 − a)²) = (1 − a)² 2 s² / (2 − a): s² to first order in a.
  mu, s, a = 0.7, 0.5, 0.05
  lam = a * s ** 2
  sigma = np.sqrt(2 * lam)
  v_exact = (1 - a) ** 2 * 2 * s ** 2 / (2 - a)
  kernel = langevin.build_kernel(gaussian_energy(mu, s), lam, x_range=None)
  x0 = jnp.full((10_000, 2), -1.0)  # far from the mode: the chain has to get there
  state, info = jax.jit(lambda k: langevin.run_chain(kernel, k, x0, 400, sigma))(
      jax.random.key(0))
  x = np.asarray(state.x).ravel()  # 20,000 draws
  se_mean = np.sqrt(v_exact / x.size)
  assert abs(x.mean() - mu) < 4 * se_mean
  se_var = v_exact * np.sqrt(2 / x.size)  # ≈ 1 % here
  assert abs(x.var() - v_exact) < 4 * se_var
  # and the exact discrete variance, not s², is what it reaches (they differ by 7 %)
  assert abs(x.var() - s ** 2) > 4 * se_var
  assert info.energy.shape == (400, 10_000) and info.grad_norm.shape == (400, 10_000)


def test_chain_compiles_once():
  kernel = langevin.build_kernel(gaussian_energy(0.5, 0.3), 0.01)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def chain(key, x0):
    return langevin.run_chain(kernel, key, x0, 5, 0.01)

  x0 = jnp.zeros((4, 3))
  chain(jax.random.key(0), x0)
  chain(jax.random.key(1), x0 + 0.1)


def test_step_semantics_noise_first_then_gradient_then_clip():
  mu, s, lam, sigma = 0.0, 1.0, 0.3, 0.05
  kernel = langevin.build_kernel(gaussian_energy(mu, s), lam)
  x = jnp.array([[0.5, 0.9], [0.1, 0.2]])
  key = jax.random.key(3)
  state, info = kernel(key, langevin.init(x), sigma)
  x_noised = x + sigma * langevin.row_normal(key, x)
  np.testing.assert_allclose(state.x_noised, x_noised, rtol=1e-6)
  # gradient of the quadratic at the noised point: (x̃ − μ)/s²
  np.testing.assert_allclose(state.x, np.clip(x_noised - lam * x_noised, 0, 1), rtol=1e-6)
  np.testing.assert_allclose(info.grad_norm, np.linalg.norm(x_noised, axis=1), rtol=1e-5)
  np.testing.assert_allclose(info.energy, 0.5 * np.sum(np.asarray(x_noised) ** 2, 1), rtol=1e-5)


def test_clip_range_gradient_clip_and_head_sum():
  x = jnp.full((3, 4), 0.5)
  steep = lambda z: jnp.stack([100.0 * z.sum(-1), 300.0 * z.sum(-1)], axis=-1)  # 2 heads
  # samplers follow the head sum: gradient 400 per pixel
  state, info = langevin.build_kernel(steep, 1e-3, x_range=None)(
      jax.random.key(0), langevin.init(x), 0.0)
  np.testing.assert_allclose(state.x, 0.5 - 0.4, rtol=1e-6)
  np.testing.assert_allclose(info.grad_norm, 400.0 * 2, rtol=1e-6)
  clipped, _ = langevin.build_kernel(steep, 1e-3, grad_clip=0.01, x_range=None)(
      jax.random.key(0), langevin.init(x), 0.0)
  np.testing.assert_allclose(clipped.x, 0.5 - 1e-5, rtol=1e-6)
  boxed, _ = langevin.build_kernel(steep, 1.0)(jax.random.key(0), langevin.init(x), 0.0)
  assert float(boxed.x.min()) == 0.0


def test_annealed_noise_schedule():
  np.testing.assert_allclose(langevin.noise_schedule(0.1, 4, anneal=True),
                             [0.075, 0.05, 0.025, 0.0], rtol=1e-6)
  np.testing.assert_allclose(langevin.noise_schedule(0.1, 3), [0.1] * 3, rtol=1e-6)


def test_row_noise_is_prefix_stable():
  key = jax.random.key(7)
  big = langevin.row_normal(key, jnp.zeros((16, 3, 3, 1)))
  small = langevin.row_normal(key, jnp.zeros((4, 3, 3, 1)))
  np.testing.assert_array_equal(big[:4], small)
  assert abs(float(big.std()) - 1.0) < 0.2


def test_test_time_chain_applies_a_transition_after_each_block():
  """num_blocks transitions, none after the final steps; the final steps run in pieces of at
  most block_steps (one compiled program per distinct piece)."""
  assert langevin.test_chain_segments(4, 3, 5) == [(3, True)] * 4 + [(3, False), (2, False)]
  assert langevin.test_chain_segments(0, 20, 40) == [(20, False), (20, False)]
  assert langevin.test_chain_segments(2, 0, 7) == [(7, False)]
  assert langevin.test_chain_segments(0, 20, 0) == []
  flat = lambda variables, z, y: jnp.zeros((z.shape[0], 1))  # only transitions move x
  settings = sampling.TestChain(
      chain=settings_lib.ChainSettings(step_size=1.0, noise_scale=0.0, clip_x=False),
      num_blocks=4, block_steps=3, final_steps=5)
  sampler = sampling.Sampler(flat, settings, (3,), transition=lambda key, x: x + 1.0)
  xs = [jnp.zeros((2, 3))]
  (infos,) = sampler.continue_chains(None, jax.random.key(0), xs, [None])
  np.testing.assert_allclose(xs[0], 4.0)
  assert infos.energy.shape == (4 * 3 + 5, 2)


@pytest.mark.parametrize("anneal", [False, True])
def test_chain_is_a_pure_function_of_key_and_start(anneal):
  kernel = langevin.build_kernel(gaussian_energy(0.5, 0.3), 0.01)
  x0 = jax.random.uniform(jax.random.key(1), (6, 5))
  run = lambda x: langevin.run_chain(kernel, jax.random.key(2), x, 7, 0.02, anneal)[0].x
  full = run(x0)
  np.testing.assert_array_equal(full, run(x0))
  np.testing.assert_allclose(full[:2], run(x0[:2]), rtol=1e-6)  # replay on a prefix


def test_unrolled_chain_computes_the_same_numbers():
  kernel = langevin.build_kernel(gaussian_energy(0.5, 0.3), 0.01)
  x0 = jax.random.uniform(jax.random.key(1), (6, 5))
  run = lambda unroll: jax.jit(lambda x: langevin.run_chain(
      kernel, jax.random.key(2), x, 7, 0.02, unroll=unroll))(x0)
  (rolled, infos), (unrolled, infos_u) = run(1), run(7)
  np.testing.assert_allclose(rolled.x, unrolled.x, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(infos.grad_norm, infos_u.grad_norm, rtol=1e-6)


@pytest.mark.parametrize("anneal", [False, True])
def test_segments_run_in_turn_are_the_chain(anneal):
  # ebm_jax/chain_program.py runs the training chain as segments dispatched from the host
  kernel = langevin.build_kernel(gaussian_energy(0.5, 0.3), 0.01)
  x0 = jax.random.uniform(jax.random.key(1), (6, 5))
  key = jax.random.key(2)
  want, want_infos = langevin.run_chain(kernel, key, x0, 7, 0.02, anneal)
  sigmas = langevin.noise_schedule(0.02, 7, anneal)
  segment = jax.jit(lambda state, sig, first: langevin.run_segment(kernel, key, state, sig, first))
  state, infos, first = langevin.init(x0), [], 0
  assert langevin.segment_lengths(7, 3) == [3, 3, 1]
  for n in langevin.segment_lengths(7, 3):
    state, info = segment(state, sigmas[first:first + n], first)
    infos.append(info)
    first += n
  np.testing.assert_allclose(state.x, want.x, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(state.x_noised, want.x_noised, rtol=1e-6, atol=1e-7)
  got = jax.tree.map(lambda *a: jnp.concatenate(a), *infos)
  np.testing.assert_allclose(got.grad_norm, want_infos.grad_norm, rtol=1e-6)
  np.testing.assert_allclose(got.energy, want_infos.energy, rtol=1e-6)
  assert segment._cache_size() == 2  # one program per segment length, whatever `first`
  assert langevin.segment_lengths(40, 5) == [5] * 8 and langevin.segment_lengths(3, 5) == [3]


