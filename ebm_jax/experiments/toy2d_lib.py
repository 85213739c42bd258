"""Every training regime judged by exact likelihood on 2-D densities; the command line is
ebm_jax/experiments/toy2d.py:

  python -m ebm_jax.experiments.toy2d --workdir=runs/toy2d [--steps=3000 --seeds=0,1,2]

Each (regime, density, seed) is an ordinary training workdir, WORKDIR/REGIME/DENSITY/seed_S,
trained from `configs/toy2d.py:DENSITY` with the regime's changes and the same steps and seed.
The model's density exp(−E(x)) is normalised on the square [−4, 4]² (buffer.noise_range, where
all the toy data lies): its log Z is integrated on a 512 × 512 grid (exact up to the grid) and
estimated by AIS beside it (eval/likelihood.py), and the held-out NLL is scored on 2,000 fresh
draws from the true density, whose own NLL (closed form; two_moons by quadrature) is the floor.
WORKDIR/toy2d.md, toy2d.json and densities.png (the learned densities beside the data) are
rewritten after every run; a rerun skips finished runs and resumes an interrupted one.

Regimes (configs/regimes.py; the 2-D sampler is textbook Langevin, λ = 0.005, σ = 0.1, T = 1):
"""

import json
import os
import time
import zlib
from typing import Any, Callable

import ml_collections
import numpy as np
from absl import logging

from ebm_jax import files, restore
from ebm_jax.configs import regimes
from ebm_jax.configs import toy2d as toy2d_config


def _no_kl(c) -> None:
  c.loss.opt = False
  c.loss.ent = False


def _right_kl(c) -> None:
  regimes.apply_kl(c, "right")


def _igebm(c) -> None:
  """IGEBM's training without its image-scale sampler: CD + L2 only, FIFO replay with 5 %
  restarts, IGEBM's Adam (β = (0, 0.999), per-element clip); the 2-D λ and σ are kept (its
  λ = 10 and ∇ₓ clip 0.01 are in pixel units)."""
  _no_kl(c)
  c.buffer.kind = "fifo"
  c.buffer.noise_restart_prob = 0.05
  regimes.apply_igebm_optimizer(c)


def _true_cd(c) -> None:
  regimes.apply_true_cd(c)


def _true_cd_kl(c) -> None:
  regimes.apply_true_cd(c)
  regimes.apply_kl(c, "paper")


def _true_cd_right_kl(c) -> None:
  regimes.apply_true_cd(c)
  regimes.apply_kl(c, "right")


def _short_run(c) -> None:
  regimes.apply_short_run(c)


def _mala(c) -> None:
  c.langevin.sampler = "mala"


def _hmc(c) -> None:
  c.langevin.sampler = "hmc"
  c.langevin.leapfrog_steps = 3


REGIMES: tuple[tuple[str, str, Callable[[Any], None] | None], ...] = (
    ("icd", "full ICD loss (L_CD + L_reg + L_KL, reservoir)", None),
    ("no_kl", "L_KL off", _no_kl),
    ("right_kl", "the critique's KL sign (loss.kl_form='right', §5.4.1)", _right_kl),
    ("igebm", "IGEBM: no KL, FIFO buffer, 5 % restarts, IGEBM's Adam", _igebm),
    ("true_cd", "true CD: chains start at data (critique §6.1), no KL", _true_cd),
    ("true_cd_kl", "true CD with L_KL, the paper's sign", _true_cd_kl),
    ("true_cd_right_kl", "true CD with L_KL, the critique's sign (§6.1's test)",
     _true_cd_right_kl),
    ("short_run", "short-run chains from noise at every step, no KL", _short_run),
    ("mala", "full ICD loss, MALA chains", _mala),
    ("hmc", "full ICD loss, HMC chains (3 leapfrog steps)", _hmc),
)
REGIME_NAMES = tuple(r[0] for r in REGIMES)
__doc__ += "".join(f"\n  {name:<10}  {text}" for name, text, _ in REGIMES) + "\n"
DENSITIES = toy2d_config.DENSITIES


def regime_config(regime: str, density: str, steps: int, seed: int) -> ml_collections.ConfigDict:
  c = toy2d_config.get_config(density)
  edit = dict((r[0], r[2]) for r in REGIMES)[regime]
  if edit is not None:
    edit(c)
  c.seed = seed
  c.train.num_steps = steps
  c.train.checkpoint_every = steps
  c.train.log_every = max(steps // 10, 1)
  c.train.image_every = 0
  c.sample.num = 500
  c.sample.batch_size = 500
  return c


def run_one(config, workdir: str, *, chains: int, temperatures: int,
            ais_stream: int | None = None) -> dict:
  """Trains (resuming) and scores one run; returns its row of results. Runs of one seed share
  the held-out points; `ais_stream` gives each its own AIS key."""
  from ebm_jax import train  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import likelihood  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  train.train_and_evaluate(config, workdir)
  t1 = time.time()
  trained = restore.load(workdir)
  out = likelihood.evaluate(trained, num=2000, chains=chains, temperatures=temperatures,
                            sampler="hmc", step_size=0.1, leapfrog_steps=5, seed=config.seed,
                            ais_stream=ais_stream)
  density = _grid_density(trained.energy_fn(), 128)
  np.save(os.path.join(workdir, "density_grid.npy"), density)
  return {**out, "step": trained.step, "train_seconds": t1 - t0, "eval_seconds": time.time() - t1}


def _grid_points(n: int, lo: float, hi: float) -> np.ndarray:
  """(n², 2) points of an n × n grid on [lo, hi]², rows of the image along y."""
  c = np.linspace(lo, hi, n)
  return np.stack(np.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)


def _grid_density(energy, n: int, lo: float = -4.0, hi: float = 4.0) -> np.ndarray:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  pts = _grid_points(n, lo, hi)
  e = np.asarray(energy(jnp.asarray(pts, jnp.float32)), np.float64).reshape(n, n)
  p = np.exp(-(e - e.min()))
  return p / p.sum()


def _true_grid(density: str, n: int = 128, lo: float = -4.0, hi: float = 4.0) -> np.ndarray:
  from ebm_jax.data import toy2d  # pylint: disable=import-outside-toplevel
  p = np.exp(toy2d.toy2d_log_density(density, _grid_points(n, lo, hi))).reshape(n, n)
  return p / p.sum()


def _mean_se(values: list[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def summary(results: dict, densities: list[str]) -> dict:
  """{regime: {density: {nll, nll_se, ais, ais_se, seeds}}}: the grid NLL's mean over seeds and
  its standard error across them; the AIS NLL's mean and the mean of the runs' own AIS errors."""
  out: dict = {}
  for name, _, _ in REGIMES:
    for d in densities:
      runs = results.get(name, {}).get(d, [])
      if runs:
        nll, nll_se = _mean_se([r["nll_grid"] for r in runs])
        out.setdefault(name, {})[d] = {
            "nll": nll, "nll_se": nll_se, "ais": float(np.mean([r["nll_ais"] for r in runs])),
            "ais_se": float(np.mean([r["ais"]["stderr"] for r in runs])), "seeds": len(runs)}
  truth = {}
  for d in densities:
    for name in out:
      runs = results[name].get(d, [])
      if runs and runs[0].get("nll_true") is not None:
        truth[d] = float(np.mean([r["nll_true"] for r in runs]))
  out["truth"] = truth
  return out


def markdown(results: dict, header: str, densities: list[str]) -> str:
  s = summary(results, densities)
  lines = [header, "", "Held-out NLL in nats (2,000 fresh draws per seed; lower is better): "
           "grid integration, mean over seeds ± its standard error across them; beneath it, "
           "the AIS estimate's mean ± the runs' mean reported AIS standard error. The floor is "
           "the true density's own NLL (closed form; two moons by quadrature).", "",
           "| regime | " + " | ".join(densities) + " |", "|---|" + "---|" * len(densities)]
  for name, _, _ in REGIMES:
    cells = []
    for d in densities:
      c = s.get(name, {}).get(d)
      if c is None:
        cells.append("–")
        continue
      se = "" if np.isnan(c["nll_se"]) else f" ± {c['nll_se']:.3f}"
      cells.append(f"**{c['nll']:.3f}**{se}<br>AIS {c['ais']:.3f} ± {c['ais_se']:.3f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("| *truth (floor)* | " + " | ".join(
      f"{s['truth'][d]:.3f}" if d in s["truth"] else "–" for d in densities) + " |")
  lines += ["", "| regime | what changes |", "|---|---|"]
  lines += [f"| {n} | {t} |" for n, t, _ in REGIMES]
  return "\n".join(lines) + "\n"


def plot(workdir: str, results: dict, densities: list[str], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = ["data"] + [n for n, _, _ in REGIMES if n in results]
  fig, axes = plt.subplots(len(names), len(densities),
                           figsize=(1.6 * len(densities), 1.6 * len(names)), squeeze=False)
  for i, name in enumerate(names):
    for j, d in enumerate(densities):
      ax = axes[i, j]
      ax.set_xticks([]), ax.set_yticks([])
      if name == "data":
        img = _true_grid(d)
      else:
        runs = results[name].get(d, [])
        f = os.path.join(workdir, name, d, f"seed_{runs[0]['seed']}", "density_grid.npy") \
            if runs else None
        if f is None or not os.path.exists(f):
          ax.axis("off")
          continue
        img = np.load(f)
      ax.imshow(img, origin="lower", cmap="magma", interpolation="nearest")
      if i == 0:
        ax.set_title(d, fontsize=9)
      if j == 0:
        ax.set_ylabel(name, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_all(workdir: str, *, regime_names: list[str], densities: list[str], seeds: list[int],
            steps: int, chains: int, temperatures: int, report_only: bool = False) -> str:
  """Trains and scores every run not finished yet; rewrites the table and figure after each.
  `report_only`: writes them from the finished runs, training none."""
  files.make_dirs(workdir)
  results: dict[str, dict[str, list[dict]]] = {}
  c = toy2d_config.get_config("rings")
  header = (f"2-D densities, every regime trained {steps} steps (seeds {seeds}) from "
            f"`configs/toy2d.py` (MLP {'×'.join(map(str, c.model.mlp_hidden))}, "
            f"B = {c.train.batch_size}, K = {c.langevin.num_steps}, λ = {c.langevin.step_size}, "
            f"α = {c.loss.reg_weight}, Adam {c.optim.learning_rate:g} (8gaussians "
            f"{toy2d_config.get_config('8gaussians').optim.learning_rate:g}), "
            f"EMA {c.optim.ema_decay}"
            f"{' with warm-up' if c.optim.ema_warmup else ''}).")

  def write() -> None:
    files.write_text(os.path.join(workdir, "toy2d.json"), json.dumps(
        {"header": header, "summary": summary(results, densities), "runs": results}, indent=2))
    files.write_text(os.path.join(workdir, "toy2d.md"), markdown(results, header, densities))
    plot(workdir, results, densities, os.path.join(workdir, "densities.png"))

  todo = [(r, d, s) for r in regime_names for d in densities for s in seeds]
  t_start, timed = time.time(), 0
  for n, (regime, density, seed) in enumerate(todo, 1):
    run_dir = os.path.join(workdir, regime, density, f"seed_{seed}")
    done = os.path.join(run_dir, "result.json")
    if os.path.exists(done):
      with open(done) as f:
        results.setdefault(regime, {}).setdefault(density, []).append(json.load(f))
      continue
    if report_only:
      continue
    eta = (time.time() - t_start) / timed * (len(todo) - n + 1) if timed else None
    logging.info("Run %d/%d: %s on %s, seed %d%s", n, len(todo), regime, density, seed,
                 "" if eta is None else f" (ETA {eta / 60:.0f} min)")
    config = regime_config(regime, density, steps, seed)
    result = {"regime": regime, "density": density, "seed": seed,
              **run_one(config, run_dir, chains=chains, temperatures=temperatures,
                        ais_stream=zlib.crc32(f"{regime}/{density}".encode()) & 0x7FFFFFFF)}
    files.write_text(done, json.dumps(result, indent=2))
    timed += 1
    results.setdefault(regime, {}).setdefault(density, []).append(result)
    write()
  write()
  return markdown(results, header, densities)
