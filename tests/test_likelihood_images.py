"""`likelihood.evaluate` (the `evaluate likelihood` command's work) on an image-shaped energy
whose normaliser is known in closed form.

E(x) = Σ_d a (x_d − μ)² on the box [0, 1]^D of 4 × 4 × 1 images (D = 16): exp(−E/T)
factorises over pixels, so log Z = D · log ∫₀¹ exp(−a (t − μ)² / T) dt, exact through the
error function. A stub model returns that energy as two heads (evaluate sums them) and the
held-out images are a fixed set of points inside the box, so every number evaluate reports can
be written down from its formula:

  * AIS log Z (MALA and HMC transitions, from the uniform base on the box) within three of its
    reported standard errors and 0.05 nats of the exact value, at a temperature T ≠ 1 (at
    T = 1 the exact value is 2.5 nats away, so a temperature dropped from AIS's target fails);
  * held-out NLL = E_u[E((q + u)/L)]/T + log Z for the stored levels q, uniformly dequantised,
    about −2.7 nats, not 0 (a temperature dropped from the NLL, or log Z not added, fails); the
    expectation over u in closed form, a Σ [((q + ½)/L − μ)² + 1/(12 L²)], which a score at
    the bins' centres misses by a D / (12 L² T) — 0.33 nats at L = 4;
  * bits per dimension = (NLL + D log 256) / (D log 2) for 256-level data scaled to [0, 1]
    (eval/likelihood.py's convention for dequantised 8-bit images): a formula without the
    division by D is 16 times too large;
  * refusals: a conditional model, held-out points outside the box, an unknown sampler.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import special

from ebm_jax import restore
from ebm_jax.configs import default
from ebm_jax.data import DatasetInfo
from ebm_jax.errors import UserError
from ebm_jax.eval import likelihood

SHAPE = (4, 4, 1)
D = int(np.prod(SHAPE))
A, MU, T = 2.0, 0.3, 0.5  # a / T = 4: a pixel density of sd 0.35, far from uniform on [0, 1]
LEVELS = 256


def _exact_log_z(a: float, mu: float, temperature: float) -> float:
  k = a / temperature  # ∫₀¹ exp(−k (t − μ)²) dt = √(π/k)/2 · (erf(√k (1 − μ)) + erf(√k μ))
  one = 0.5 * math.sqrt(math.pi / k) * (special.erf(math.sqrt(k) * (1 - mu))
                                        + special.erf(math.sqrt(k) * mu))
  return D * math.log(one)


def _energy_np(x: np.ndarray) -> np.ndarray:
  return A * np.sum((x.reshape(len(x), -1).astype(np.float64) - MU) ** 2, axis=1)


class _QuadraticModel:
  """A stand-in for the Flax energy net: `apply(variables, x, y)` gives (B, 2) head energies,
  the first and second halves of the pixels' Σ a (x − μ)², with a and μ read from the run's
  variables (built from the EMA item as restore builds them)."""

  def apply(self, variables, x, y=None):
    assert y is None
    p = variables["params"]
    sq = p["a"] * (x.reshape(x.shape[0], -1) - p["mu"]) ** 2
    return jnp.stack([sq[:, :D // 2].sum(-1), sq[:, D // 2:].sum(-1)], axis=-1)


EMA = {"params": {"a": jnp.float32(A), "mu": jnp.float32(MU)}, "model_state": {}}


def _config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.data.name = "shapes"
  c.langevin.clip_x = True  # images live on [0, 1]^D
  c.buffer.noise_range = (0.0, 1.0)
  return c


def _info(num_classes: int = 0) -> DatasetInfo:
  return DatasetInfo("shapes", SHAPE, num_classes, LEVELS, -1, ())


def _held_out(n: int = 400, levels: int = LEVELS) -> np.ndarray:
  """Stored levels of images whose pixels cluster around μ."""
  rng = np.random.default_rng(11)
  return np.clip(np.rint(rng.normal(MU, 0.25, (n,) + SHAPE) * levels - 0.5), 0,
                 levels - 1).astype(np.uint8)


def _expected_energy(q: np.ndarray, levels: int) -> float:
  """E_u[E((q + u)/L)] averaged over the images, in closed form."""
  centres = (q.reshape(len(q), -1).astype(np.float64) + 0.5) / levels
  return float((A * (((centres - MU) ** 2) + 1 / (12 * levels ** 2)).sum(1)).mean())


@pytest.fixture
def held_out(monkeypatch):
  """evaluate reads the held-out split's stored levels through data.load_arrays: give it fixed
  ones (a test may replace points["q"])."""
  from ebm_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  points = {"q": _held_out()}

  def load_arrays(data, n, *, split=None, seed=0):
    del data, split, seed
    return {"image": points["q"][:n]}

  monkeypatch.setattr(data_lib, "load_arrays", load_arrays)
  return points


def _evaluate(sampler: str, step_size: float, levels: int = LEVELS, **kw) -> dict:
  info = DatasetInfo("shapes", SHAPE, kw.pop("num_classes", 0), levels, -1, ())
  run = restore.Run.of(_config(), info, _QuadraticModel(), restore.ema_variables(EMA))
  return likelihood.evaluate(run, num=400, chains=1024, temperatures=1000, sampler=sampler,
                             step_size=step_size, leapfrog_steps=4, temperature=T, seed=0, **kw)


@pytest.mark.parametrize("sampler, step_size", [
    ("mala", 0.005),
    pytest.param("hmc", 0.02, marks=pytest.mark.slow),  # 5 gradients a transition: slower
])
def test_image_likelihood_matches_the_closed_form_at_a_temperature(held_out, sampler,
                                                                   step_size):
  exact = _exact_log_z(A, MU, T)
  assert abs(exact - _exact_log_z(A, MU, 1.0)) > 2.0  # T matters by far more than the tolerance
  out = _evaluate(sampler, step_size)
  ais = out["ais"]
  err = ais["log_z"] - exact
  # a reported se under the 0.05-nat tolerance, so the three-se check below is not vacuous
  # (HMC's adapted step gives ~0.036 on 1,024 chains, MALA's ~0.02)
  assert ais["stderr"] < 0.05 and 0.2 < ais["accept_rate"] <= 1.0, ais
  assert abs(err) < 3 * ais["stderr"] + 1e-3 and abs(err) < 0.05, (err, ais)
  assert out["box"] == (0.0, 1.0) and out["temperature"] == T and out["num"] == 400

  # NLL from its formula, with the exact log Z: −2.7 nats (the held-out pixels crowd around
  # μ), far from 0 and from either term alone, so a lost term or factor cannot hide
  mean_energy = _expected_energy(held_out["q"], LEVELS)
  nll_exact = mean_energy / T + exact
  assert -3.0 < nll_exact < -2.0 and mean_energy / T > 3.0, (nll_exact, mean_energy)
  assert out["nll_ais"] - ais["log_z"] == pytest.approx(mean_energy / T, rel=2e-3)
  assert abs(out["nll_ais"] - nll_exact) < 0.05, (out["nll_ais"], nll_exact)

  # bits per dimension of 256-level data on [0, 1]^D: (NLL + D log 256) / (D log 2)
  bits_exact = (nll_exact + D * math.log(LEVELS)) / (D * math.log(2))
  assert 7.7 < bits_exact < 7.8, bits_exact
  assert out["bits_per_dim_ais"] == pytest.approx(
      (out["nll_ais"] + D * math.log(LEVELS)) / (D * math.log(2)), rel=1e-9)
  assert abs(out["bits_per_dim_ais"] - bits_exact) < 0.05 / (D * math.log(2)), out
  assert "grid" not in out and "nll_true" not in out  # 2-D only


def test_bits_per_dim_divides_by_the_dimension_and_counts_the_levels():
  # NLL 10 nats over 16 pixels of 17-level data (sklearn digits): log2 17 − 10 / (16 ln 2)
  assert likelihood.bits_per_dim(10.0, 16, 17) == pytest.approx(
      math.log2(17) + 10.0 / (16 * math.log(2)))
  assert likelihood.bits_per_dim(-3.0, 784) == pytest.approx(8.0 - 3.0 / (784 * math.log(2)))


def test_likelihood_refuses_a_conditional_model(held_out):
  with pytest.raises(UserError, match="unconditional"):
    _evaluate("mala", 0.005, num_classes=2)


@pytest.mark.parametrize("value", [LEVELS, -1])
def test_likelihood_refuses_held_out_points_outside_the_box(held_out, value):
  q = held_out["q"].astype(np.int64)
  q[3, 1, 2, 0] = value  # one pixel of one image: a level the data cannot hold
  held_out["q"] = q
  with pytest.raises(UserError, match="outside the box") as err:
    _evaluate("mala", 0.005)
  assert "4 of 1600" in str(err.value)  # the image in each of the 4 dequantisation draws


def test_the_nll_is_of_dequantised_images_not_of_bin_centres(held_out):
  # 4 levels: the dequantisation's variance term a D / (12 L² T) is 0.33 nats, far above the
  # Monte-Carlo error of 4 draws × 400 images (about 0.02)
  levels = 4
  held_out["q"] = _held_out(levels=levels)
  out = _evaluate("mala", 0.005, levels=levels)
  expected = _expected_energy(held_out["q"], levels) / T
  centres = (held_out["q"].astype(np.float64) + 0.5) / levels
  at_centres = float(_energy_np(centres).mean()) / T
  assert expected - at_centres == pytest.approx(A * D / (12 * levels ** 2 * T), rel=1e-9)
  got = out["nll_ais"] - out["ais"]["log_z"]
  assert abs(got - expected) < 0.06 and abs(got - at_centres) > 0.25, (got, expected, at_centres)
  assert out["num"] == 400 and out["dequant_draws"] == 4


def test_ais_refuses_bad_settings():
  energy = lambda x: jnp.sum(x.reshape(x.shape[0], -1), -1)
  base = likelihood.Base("uniform")
  with pytest.raises(UserError, match="sampler"):
    likelihood.ais(energy, SHAPE, jax.random.key(0), base=base, sampler="ula", box=(0.0, 1.0))
  with pytest.raises(UserError, match="temperature"):
    likelihood.ais(energy, SHAPE, jax.random.key(0), base=base, temperature=0.0)
  with pytest.raises(UserError, match="uniform base"):  # a box needs the uniform base on it
    likelihood.ais(energy, SHAPE, jax.random.key(0), base=likelihood.Base("gaussian"),
                   box=(0.0, 1.0))
  with pytest.raises(UserError):
    likelihood.check_settings(256, 300, 0.01, 4, temperature=-1.0)
