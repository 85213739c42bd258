"""HMC (langevin.sampler='hmc') and the likelihood estimators of eval/likelihood.py, against
closed forms: stationary moments of known targets, acceptance limits, the box; AIS log Z of a
64-dimensional Gaussian and of 2-D energies against grid integration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import train_tiny_2d
from ebm_jax import langevin
from ebm_jax.eval import likelihood


def _gaussian(mu: float, s: float):
  return lambda x: (jnp.sum((x.reshape(x.shape[0], -1) - mu) ** 2, axis=-1) / (2 * s * s))[:, None]


def _hmc(energy, step_size, noise, x0, steps, leapfrog=5, x_range=None):
  kernel = langevin.build_kernel(energy, step_size, x_range=x_range, sampler="hmc",
                                 leapfrog_steps=leapfrog)
  state, infos = langevin.run_chain(kernel, jax.random.key(0), x0, steps, noise)
  return np.asarray(state.x), np.asarray(infos.accepted)


# -------------------------------------------------------------------------------------- HMC


def test_hmc_keeps_a_gaussian_target_at_the_temperature_lambda_and_sigma_imply():
  # T = σ² / (2λ) = 4: the target exp(−E/T) of E = (x − 0.5)² / 2 is N(0.5, 4); a 2-D energy
  # with correlated coordinates checks that each chain moves along its own gradient.
  x, acc = _hmc(_gaussian(0.5, 1.0), step_size=0.125, noise=1.0, x0=jnp.zeros((4000, 2)),
                steps=200)
  assert 0.5 < acc.mean() < 1.0, acc.mean()
  assert np.allclose(x.mean(0), 0.5, atol=0.12), x.mean(0)
  assert np.allclose(x.var(0), 4.0, rtol=0.08), x.var(0)
  assert abs(np.corrcoef(x.T)[0, 1]) < 0.06


def test_hmc_accepts_small_steps_and_rejects_huge_ones():
  _, small = _hmc(_gaussian(0.5, 1.0), 1e-4, np.sqrt(2e-4), jnp.zeros((500, 1)), 30)
  _, huge = _hmc(_gaussian(0.5, 1.0), 25.0, np.sqrt(50.0), jnp.zeros((500, 1)), 30)
  assert small.mean() > 0.99, small.mean()
  assert huge.mean() < 0.05, huge.mean()


def test_hmc_never_leaves_the_box_and_samples_the_truncated_target():
  mu, s = 0.8, 0.3  # N(0.8, 0.3²) cut to [0, 1]: mean and variance in closed form
  x0 = jax.random.uniform(jax.random.key(1), (4000, 3))
  x, acc = _hmc(_gaussian(mu, s), 0.02, 0.2, x0, 150, leapfrog=3, x_range=(0.0, 1.0))
  assert x.min() >= 0.0 and x.max() <= 1.0
  assert 0.1 < acc.mean() < 1.0
  truth = stats.truncnorm((0 - mu) / s, (1 - mu) / s, loc=mu, scale=s)
  assert np.allclose(x.mean(0), truth.mean(), atol=0.02), (x.mean(0), truth.mean())
  assert np.allclose(x.var(0), truth.var(), rtol=0.1), (x.var(0), truth.var())


# -------------------------------------------------------------------------------------- AIS


@pytest.mark.slow  # ~36 s; the 64-d multimodal box energy below checks the defaults by default
def test_ais_recovers_the_log_normaliser_of_a_64_dimensional_gaussian():
  d, mu, s = 64, 0.3, 0.5
  energy = lambda x: _gaussian(mu, s)(x)[:, 0]
  exact = d / 2 * np.log(2 * np.pi * s * s)
  r = likelihood.ais(energy, (d,), jax.random.key(0), base=likelihood.Base("gaussian"),
                     num_chains=512, num_temperatures=2000, step_size=0.3, leapfrog_steps=5)
  err = r.log_z - exact
  assert abs(err) < 0.05, (err, r)
  assert abs(err) < 3 * r.stderr and r.stderr < 0.05, (err, r.stderr)
  assert r.ess > 50 and 0.5 < r.accept_rate <= 1.0


def _product_of_mixtures(d, centres=(0.3, 0.7), s=0.15):
  """E of Π_i ½[N(x_i; c₀, s²) + N(x_i; c₁, s²)] (2^d modes) and its exact log Z on [0, 1]^d."""
  def energy(x):
    z = [-0.5 * ((x - c) / s) ** 2 for c in centres]
    return -jnp.sum(jnp.logaddexp(*z) - jnp.log(2 * s * jnp.sqrt(2 * jnp.pi)), axis=-1)

  mass = np.mean([stats.norm.cdf((1 - c) / s) - stats.norm.cdf(-c / s) for c in centres])
  return energy, d * np.log(mass)


@pytest.mark.slow  # 512 chains × 4,000 temperatures of HMC: about 40 s on 2 cores
def test_ais_with_its_defaults_recovers_log_z_of_a_64_dimensional_multimodal_energy_in_a_box():
  energy, exact = _product_of_mixtures(64)
  r = likelihood.ais(energy, (64,), jax.random.key(0), base=likelihood.Base("uniform", 0, 1),
                     box=(0.0, 1.0))
  err = r.log_z - exact
  assert abs(err) < 0.1 and abs(err) < 3 * r.stderr, (err, r.stderr, r.ess)
  # the step adapted from its start (0.05, accepted ~25 % here) to the target acceptance
  assert abs(r.accept_rate - likelihood.TARGET_ACCEPT["hmc"]) < 0.03, r.accept_rate
  assert r.final_step_size < 0.02 and r.ess > 0.1 * r.num_chains, r


def test_ais_warns_when_a_forced_step_leaves_too_few_effective_chains(caplog):
  energy, exact = _product_of_mixtures(64)
  with caplog.at_level("WARNING"):
    r = likelihood.ais(energy, (64,), jax.random.key(0), base=likelihood.Base("uniform", 0, 1),
                       box=(0.0, 1.0), num_chains=128, num_temperatures=500, step_size=0.2,
                       adapt=False, sampler="mala")
  assert r.accept_rate < 0.1 and r.final_step_size == pytest.approx(0.2)
  assert "not to be trusted" in caplog.text, caplog.text
  assert abs(r.log_z - exact) > 0.5  # what the warning is for: the estimate is far off
  caplog.clear()
  with caplog.at_level("WARNING"):  # the same budget, adapted: no warning is due
    r = likelihood.ais(energy, (8,), jax.random.key(0), base=likelihood.Base("uniform", 0, 1),
                       box=(0.0, 1.0), num_chains=128, num_temperatures=500, sampler="mala")
  assert r.ess > 0.1 * r.num_chains and "not to be trusted" not in caplog.text


def test_grid_and_ais_agree_on_a_multimodal_2d_energy_in_a_box():
  # An 8-mode mixture wholly inside [−4, 4]²: log Z in closed form (the mixture is normalised).
  angles = 2 * np.pi * np.arange(8) / 8
  centres = jnp.asarray(2.0 * np.stack([np.cos(angles), np.sin(angles)], -1), jnp.float32)
  std = 0.25

  def energy(x):
    sq = jnp.sum((x[:, None, :] - centres[None]) ** 2, -1) / (2 * std * std)
    return -(jax.nn.logsumexp(-sq, axis=1) - jnp.log(8.0) - jnp.log(2 * jnp.pi * std * std))

  grid = likelihood.grid_log_z(energy, -4.0, 4.0, n=512)
  assert abs(grid) < 1e-3, grid  # log 1
  r = likelihood.ais(energy, (2,), jax.random.key(3), base=likelihood.Base("uniform", -4, 4),
                     box=(-4.0, 4.0), num_chains=1024, num_temperatures=1000, step_size=0.1,
                     leapfrog_steps=5)
  assert abs(r.log_z - grid) < 0.02, (r.log_z, grid, r.stderr)


def test_ais_matches_grid_integration_on_a_trained_2d_energy(tmp_path):
  run = train_tiny_2d("rings", 150, str(tmp_path / "run"))
  assert run.step == 150
  out = likelihood.evaluate(run, num=2000, chains=256, temperatures=1000, sampler="hmc",
                            step_size=0.1, leapfrog_steps=5)
  # within 3 reported standard errors of the exact integral (and never more than 0.05 off)
  tolerance = min(max(3 * out["ais"]["stderr"], 0.02), 0.05)
  assert abs(out["ais_minus_grid"]) < tolerance, out
  assert abs(out["nll_ais"] - out["nll_grid"]) < tolerance
  assert out["nll_true"] < out["nll_grid"], out  # the truth scores best
  # another AIS stream: the same held-out points, an independent estimate, as close to the grid
  other = likelihood.evaluate(run, num=2000, chains=256, temperatures=1000, sampler="hmc",
                              step_size=0.1, leapfrog_steps=5, ais_stream=1)
  assert other["nll_grid"] == out["nll_grid"] and other["nll_true"] == out["nll_true"]
  assert other["ais"]["log_z"] != out["ais"]["log_z"]
  assert abs(other["ais_minus_grid"]) < min(max(3 * other["ais"]["stderr"], 0.02), 0.05), other


def test_sigmoid_schedule_runs_from_zero_to_one():
  b = likelihood.sigmoid_schedule(100)
  assert b[0] == 0.0 and b[-1] == 1.0 and np.all(np.diff(b) > 0)
  with pytest.raises(likelihood.UserError):
    likelihood.sigmoid_schedule(0)


def test_bits_per_dim_of_the_uniform_density_on_the_box_is_eight():
  # uniform on [0, 1]^D: NLL 0 nats, i.e. 8 bits per 8-bit pixel
  assert likelihood.bits_per_dim(0.0, 784) == pytest.approx(8.0)


@pytest.mark.slow  # trains two runs and scores them (about a minute)
def test_the_2d_regime_runner_writes_its_table_and_resumes(tmp_path):
  from ebm_jax.experiments import toy2d_lib  # pylint: disable=import-outside-toplevel
  kw = dict(regime_names=["icd", "hmc"], densities=["rings"], seeds=[0], steps=4, chains=8,
            temperatures=10)
  table = toy2d_lib.run_all(str(tmp_path), **kw)
  nll_table = table.split("| regime | what changes |")[0]
  rows = {line.split("|")[1].strip(): line for line in nll_table.splitlines()
          if line.startswith("|")}
  assert "AIS" in rows["icd"] and "AIS" in rows["hmc"] and "–" in rows["no_kl"]  # run / not
  assert rows["*truth (floor)*"].count("2.337") == 1  # rings' exact NLL on the held-out draws
  for name in ("toy2d.md", "toy2d.json", "densities.png"):
    assert (tmp_path / name).exists()
  done = tmp_path / "icd" / "rings" / "seed_0" / "result.json"
  stamp = done.stat().st_mtime
  assert toy2d_lib.run_all(str(tmp_path), **kw) == table  # a rerun skips finished runs
  assert done.stat().st_mtime == stamp
  wider = toy2d_lib.run_all(str(tmp_path), **{**kw, "regime_names": ["icd", "hmc", "no_kl"]},
                            report_only=True)  # reports what is finished, trains nothing
  assert wider == table and not (tmp_path / "no_kl").exists()
