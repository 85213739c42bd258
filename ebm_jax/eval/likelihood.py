"""Likelihoods of an energy model p(x) = exp(−E(x)/T) / Z on a box (images: [0, 1]^D; 2-D data:
the square of buffer.noise_range) or on R^D.

  ais           log Z by annealed importance sampling (Neal 2001, arXiv:physics/9803008): chains
                start from a normalised base p₀ (uniform on the box, or a Gaussian) and follow the
                geometric path π_β ∝ p₀^(1−β) exp(−βE/T), β: 0 → 1, with one HMC or MALA step
                per temperature (blackjax, vmapped over chains); log w accumulates
                (β_t − β_{t−1}) (−E(x)/T − log p₀(x)). Returns log Ẑ = log mean w, its standard
                error (delta method: sd(w) / (√n · mean w)) and the effective sample size. The
                step size adapts between temperatures towards a target acceptance (HMC 0.65,
                MALA 0.57): the step of temperature t is set from the chains' mean acceptance
                at t − 1, so every transition keeps its own target invariant. A warning says
                when the final ESS is below 10 % of the chains or the mean acceptance below
                0.1: the standard error is then not to be trusted.
  grid_log_z    log Z of a 2-D energy by midpoint integration on an n × n grid (exact up to
                the grid: the judge of AIS and of every 2-D regime).
  nll           held-out negative log-likelihood E(x)/T + log Z, and bits per dimension for
                images: E_u[−log p((q + u)/L)] + D log L over D log 2 for stored levels q of
                L-level data, u uniform on [0, 1)^D, averaged over `dequant_draws` draws.

The authors' repository ships an AIS estimator (`ais.py`, `hmc.py`: it mixes torch and
TensorFlow calls and does not run); this one follows Neal's algorithm with Grosse et al.'s
sigmoidal schedule (arXiv:1511.02543 §4.1).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ebm_jax.errors import UserError

# energy_fn(x) -> (B,) head-summed energies of a batch x.
Energy = Callable[[jax.Array], jax.Array]
SAMPLERS = ("hmc", "mala")
TARGET_ACCEPT = {"hmc": 0.65, "mala": 0.57}  # optimal-scaling rates (Beskos et al.; Roberts & Rosenthal)
ADAPT_RATE = 0.2  # log step += ADAPT_RATE (acceptance − target) after each temperature
MIN_ESS_FRACTION, MIN_ACCEPT = 0.1, 0.1  # below either, warn: the standard error is unreliable


class Base(NamedTuple):
  """A normalised base density: uniform on [lo, hi]^D (kind 'uniform') or N(mean, std²) per
  coordinate (kind 'gaussian'; lo/hi unused)."""
  kind: str
  lo: float = 0.0
  hi: float = 1.0
  mean: float = 0.0
  std: float = 1.0

  def log_prob(self, x: jax.Array) -> jax.Array:
    flat = x.reshape(x.shape[0], -1)
    d = flat.shape[1]
    if self.kind == "uniform":
      inside = jnp.all((flat >= self.lo) & (flat <= self.hi), axis=1)
      return jnp.where(inside, -d * jnp.log(self.hi - self.lo), -jnp.inf)
    z = (flat - self.mean) / self.std
    return -0.5 * jnp.sum(z * z, axis=1) - d * (jnp.log(self.std) + 0.5 * jnp.log(2 * jnp.pi))

  def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if self.kind == "uniform":
      return jax.random.uniform(key, shape, minval=self.lo, maxval=self.hi)
    return self.mean + self.std * jax.random.normal(key, shape)


class AISResult(NamedTuple):
  log_z: float
  stderr: float  # standard error of log Ẑ (delta method)
  ess: float  # effective sample size of the final weights, (Σw)² / Σw²
  accept_rate: float  # mean over temperatures and chains
  final_step_size: float  # the step of the last temperature (the start one when not adapted)
  num_chains: int
  num_temperatures: int
  log_weights: np.ndarray  # (num_chains,)


def sigmoid_schedule(num: int, delta: float = 4.0) -> np.ndarray:
  """β_0 = 0 < … < β_num = 1, dense at both ends (Grosse et al. 2015, §4.1)."""
  if num < 1:
    raise UserError(f"the number of temperatures must be at least 1 (got {num})")
  s = 1 / (1 + np.exp(-delta * (2 * np.arange(num + 1) / num - 1)))
  return (s - s[0]) / (s[-1] - s[0])


def ais(energy_fn: Energy, shape: tuple[int, ...], key: jax.Array, *, base: Base,
        num_chains: int = 512, num_temperatures: int = 4000, temperature: float = 1.0,
        sampler: str = "hmc", step_size: float = 0.05, leapfrog_steps: int = 5,
        box: tuple[float, float] | None = None, adapt: bool = True) -> AISResult:
  """log Z of exp(−E/T) (restricted to the box [lo, hi]^D when `box` is given). `step_size`
  is the first temperature's step; with `adapt` it follows the acceptance (module docstring),
  kept within [step_size / 1000, 1000 step_size]."""
  import blackjax  # pylint: disable=import-outside-toplevel  (its import starts jax's backend)
  if sampler not in SAMPLERS:
    raise UserError(f"--sampler={sampler!r}: choose one of {list(SAMPLERS)}")
  if num_chains < 2 or step_size <= 0 or leapfrog_steps < 1 or temperature <= 0:
    raise UserError("AIS needs at least 2 chains, a step size > 0, at least 1 leapfrog step "
                    "and a temperature > 0")
  if box is not None and base.kind != "uniform":
    raise UserError("on a box, AIS starts from the uniform base on that box")
  betas = jnp.asarray(sigmoid_schedule(num_temperatures), jnp.float32)
  size = int(np.prod(shape))
  target_accept = TARGET_ACCEPT[sampler]
  log_step0 = float(np.log(step_size))

  def target(x):  # −E/T of a batch, −∞ outside the box
    value = -energy_fn(x) / temperature
    if box is not None:
      flat = x.reshape(x.shape[0], -1)
      value = jnp.where(jnp.all((flat >= box[0]) & (flat <= box[1]), axis=1), value, -jnp.inf)
    return value

  def transition(k, x, beta, step):
    def log_density(flat):  # one chain
      z = flat.reshape((1,) + tuple(shape))
      return ((1 - beta) * base.log_prob(z) + beta * target(z))[0]

    if sampler == "hmc":
      kernel = blackjax.mcmc.hmc.build_kernel()
      run = lambda kk, st: kernel(kk, st, log_density, step, jnp.ones(size), leapfrog_steps)
      init = lambda z: blackjax.mcmc.hmc.init(z, log_density)
    else:
      kernel = blackjax.mcmc.mala.build_kernel()
      run = lambda kk, st: kernel(kk, st, log_density, step)
      init = lambda z: blackjax.mcmc.mala.init(z, log_density)

    def one(kk, z):
      new, info = run(kk, init(z))
      return new.position, info.is_accepted

    keys = jax.random.split(k, x.shape[0])
    flat, accepted = jax.vmap(one)(keys, x.reshape(x.shape[0], -1))
    return flat.reshape(x.shape), accepted

  @jax.jit
  def run_ais(key):
    k0, k_chain = jax.random.split(key)
    x = base.sample(k0, (num_chains,) + tuple(shape))

    def body(carry, t):
      x, log_w, log_step = carry
      # the weight of moving from β_{t−1} to β_t at the current point, then a step at β_t
      log_w = log_w + (betas[t] - betas[t - 1]) * (target(x) - base.log_prob(x))
      x, accepted = transition(jax.random.fold_in(k_chain, t), x, betas[t], jnp.exp(log_step))
      acc = jnp.mean(accepted.astype(jnp.float32))
      if adapt:  # the next temperature's step, from this one's acceptance
        log_step = jnp.clip(log_step + ADAPT_RATE * (acc - target_accept),
                            log_step0 - np.log(1000.0), log_step0 + np.log(1000.0))
      return (x, log_w, log_step), acc

    init = (x, jnp.zeros((num_chains,), jnp.float32), jnp.float32(log_step0))
    (x, log_w, log_step), acc = jax.lax.scan(body, init, jnp.arange(1, num_temperatures + 1))
    return log_w, acc.mean(), jnp.exp(log_step)

  log_w, acc, final_step = run_ais(key)
  log_w = np.asarray(log_w, np.float64)
  if not np.all(np.isfinite(log_w)):
    raise FloatingPointError(f"AIS: {int(np.sum(~np.isfinite(log_w)))} of {num_chains} "
                             "log-weights are not finite (a chain left the box, or E is not)")
  w = np.exp(log_w - log_w.max())
  log_z = float(np.log(w.mean()) + log_w.max())
  stderr = float(w.std(ddof=1) / (np.sqrt(num_chains) * w.mean()))
  ess = float(w.sum() ** 2 / np.sum(w * w))
  result = AISResult(log_z=log_z, stderr=stderr, ess=ess, accept_rate=float(acc),
                     final_step_size=float(final_step), num_chains=num_chains,
                     num_temperatures=num_temperatures, log_weights=log_w)
  if ess < MIN_ESS_FRACTION * num_chains or result.accept_rate < MIN_ACCEPT:
    logging.warning("AIS: effective sample size %.1f of %d chains, mean acceptance %.3f: the "
                    "standard error (%.3f) is not to be trusted; use more temperatures or "
                    "chains%s", ess, num_chains, result.accept_rate, stderr,
                    "" if adapt else ", or let the step size adapt")
  return result


def grid_log_z(energy_fn: Energy, lo: float, hi: float, n: int = 512,
               temperature: float = 1.0, batch: int = 65536) -> float:
  """log ∫_[lo,hi]² exp(−E/T) dx by the midpoint rule on an n × n grid (2-D energies only)."""
  h = (hi - lo) / n
  centres = lo + h * (np.arange(n) + 0.5)
  pts = np.stack(np.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2)
  fn = jax.jit(lambda p: -energy_fn(p) / temperature)
  values = np.concatenate([np.asarray(fn(jnp.asarray(pts[i:i + batch], jnp.float32)),
                                      np.float64) for i in range(0, len(pts), batch)])
  if not np.all(np.isfinite(values)):
    raise FloatingPointError("the energy is not finite everywhere on the grid")
  m = values.max()
  return float(m + np.log(np.exp(values - m).sum()) + 2 * np.log(h))


def nll(energy_fn: Energy, x: np.ndarray, log_z: float, temperature: float = 1.0,
        batch: int = 1000) -> float:
  """Mean −log p(x) = E(x)/T + log Z over held-out points x."""
  if len(x) == 0:
    raise UserError("no held-out points to score")
  fn = jax.jit(lambda v: energy_fn(v) / temperature)
  e = np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch], jnp.float32)), np.float64)
                      for i in range(0, len(x), batch)])
  return float(e.mean() + log_z)


def bits_per_dim(nll_nats: float, dims: int, levels: int = 256) -> float:
  """Bits per dimension of dequantised `levels`-level data scaled to [0, 1]^D."""
  return (nll_nats + dims * np.log(levels)) / (dims * np.log(2))


def check_settings(chains: int, temperatures: int, step_size: float | None,
                   leapfrog_steps: int, temperature: float) -> None:
  if (chains < 2 or temperatures < 1 or leapfrog_steps < 1 or temperature <= 0
      or (step_size is not None and step_size <= 0)):
    raise UserError("likelihood: --chains must be >= 2, --temperatures >= 1, --leapfrog_steps "
                    ">= 1, --temperature > 0 and --ais_step_size > 0")


def evaluate(run, *, num: int, chains: int, temperatures: int, sampler: str,
             step_size: float | None, leapfrog_steps: int, temperature: float = 1.0,
             seed: int = 0, grid: int = 512, ais_stream: int | None = None,
             dequant_draws: int = 4) -> dict:
  """Held-out likelihood of a trained run (restore.Run) under its EMA parameters: AIS log Z and
  NLL (bits per dimension for images); for 2-D data also grid-integrated log Z and NLL, and the
  true density's NLL on the same points where it has a closed form. `seed` picks the held-out
  points and AIS's key; `ais_stream` folded into the key gives runs scored on the same points
  AIS estimates independent of each other. Images are scored uniformly dequantised, the mean
  over `dequant_draws` draws of (q + u)/L (q the stored levels, L of them)."""
  from ebm_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from ebm_jax.data import toy2d  # pylint: disable=import-outside-toplevel
  settings, info = run.settings, run.info
  if info.num_classes:
    raise UserError("`likelihood` scores unconditional models; this run's energy is "
                    f"conditioned on {info.num_classes} classes")
  energy = run.energy_fn()
  shape = tuple(info.shape)
  is_2d = settings.data.name in data_lib.POINT_DATASETS
  step_size = step_size or (0.1 if is_2d else 0.005)
  if settings.langevin.clip_x:
    box, base = (0.0, 1.0), Base("uniform", 0.0, 1.0)
  elif is_2d:
    lo, hi = (float(v) for v in settings.buffer.noise_range)
    box, base = (lo, hi), Base("uniform", lo, hi)
  else:
    box, base = None, Base("gaussian")
  if settings.data.name == "points":  # held-out: the test split (at most num of its rows)
    x = toy2d.points_split(settings.data.path, "test")[:num]
  elif is_2d:  # held-out: fresh draws (the training stream is seeded by config.seed)
    x = toy2d.sample_toy2d(settings.data.toy_density, num, np.random.default_rng([seed, 7919]))
  else:  # uniform dequantisation of the stored levels, several draws stacked
    if info.levels < 2:
      raise UserError(f"{settings.data.name}: not stored as integer levels, so there is "
                      "nothing to dequantise")
    q = np.asarray(data_lib.load_arrays(settings.data, num, seed=seed,
                                        split=data_lib.test_split(settings.data.name))["image"])
    rng = np.random.default_rng([seed, 104729])
    x = np.concatenate([(q + rng.uniform(size=q.shape)) / info.levels
                        for _ in range(dequant_draws)]).astype(np.float32)
  if box is not None and (x.min() < box[0] or x.max() > box[1]):
    outside = int(np.sum(np.any((x.reshape(len(x), -1) < box[0])
                                | (x.reshape(len(x), -1) > box[1]), axis=1)))
    raise UserError(f"{outside} of {len(x)} held-out points lie outside the box {box} on "
                    "which the density is defined")
  key = jax.random.key(seed)
  r = ais(energy, shape, key if ais_stream is None else jax.random.fold_in(key, ais_stream),
          base=base, num_chains=chains,
          num_temperatures=temperatures, temperature=temperature, sampler=sampler,
          step_size=step_size, leapfrog_steps=leapfrog_steps, box=box)
  out = {"num": int(len(x)) // (1 if is_2d else dequant_draws), "temperature": temperature,
         "box": box,
         "ais": {"log_z": r.log_z, "stderr": r.stderr, "ess": r.ess,
                 "accept_rate": r.accept_rate, "chains": chains, "temperatures": temperatures,
                 "sampler": sampler, "step_size": step_size,
                 "final_step_size": r.final_step_size},
         "dequant_draws": 0 if is_2d else dequant_draws,
         "nll_ais": nll(energy, x, r.log_z, temperature)}
  dims = int(np.prod(shape))
  if len(shape) == 3:
    out["bits_per_dim_ais"] = bits_per_dim(out["nll_ais"], dims, int(info.levels))
  if is_2d:
    out["grid"] = {"log_z": grid_log_z(energy, box[0], box[1], grid, temperature), "n": grid}
    out["nll_grid"] = nll(energy, x, out["grid"]["log_z"], temperature)
    out["ais_minus_grid"] = r.log_z - out["grid"]["log_z"]
    out["nll_true"] = (None if settings.data.name == "points" else
                       float(-toy2d.toy2d_log_density(settings.data.toy_density, x).mean()))
  return out
