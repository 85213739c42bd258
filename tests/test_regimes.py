"""The training regimes of issue 5: IGEBM, true CD and short-run chains with either KL sign,
elastic transitions, MALA, JEM, and the ablation runner."""

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ebm_jax import buffer as buffer_lib
from ebm_jax import data as data_lib
from ebm_jax import langevin, losses, models, train
from ebm_jax import settings as settings_lib
from ebm_jax import state as state_lib
from ebm_jax.experiments import ablation_lib as ablation


def _settings(cfg):
  """The loss's keyword arguments `settings` and `chain` from a config."""
  typed = settings_lib.Settings.from_config(cfg)
  return {"settings": typed.loss, "chain": typed.langevin}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str, variant: str, **overrides):
  c = importlib.import_module(f"ebm_jax.configs.{name}").get_config(variant)
  c.data.download = False
  for dotted, value in overrides.items():
    ablation._set(c, dotted, value)  # pylint: disable=protected-access
  return c


# ------------------------------------------------------------------------------------ MALA


def _gaussian(mu: float, s: float):
  return lambda x: (jnp.sum((x - mu) ** 2, axis=-1) / (2 * s * s))[:, None]


def _run(sampler: str, step_size: float, noise: float, *, n=4000, steps=300, x0=None):
  energy = _gaussian(0.5, 1.0)
  kernel = langevin.build_kernel(energy, step_size, x_range=None, sampler=sampler)
  x0 = jnp.zeros((n, 1)) if x0 is None else x0
  state, infos = langevin.run_chain(kernel, jax.random.key(0), x0, steps, noise)
  return np.asarray(state.x[:, 0]), np.asarray(infos.accepted)


def _metropolis_energy_shift(temperature: float) -> float:
  """max |ΔĒ|/T over a batch when x moves by one float32 ulp: the part of the Metropolis
  log-ratio that is float rounding, for an MLP energy of magnitude ~10 (as trained nets give)."""
  from ebm_jax.models.nets import MLPEnergy  # pylint: disable=import-outside-toplevel
  net = MLPEnergy(hidden=(64, 64))
  x = jax.random.uniform(jax.random.key(1), (256, 2), minval=-2.0, maxval=2.0)
  params = net.init(jax.random.key(0), x)
  energy = jax.jit(lambda z: net.apply(params, z)[:, 0] + 10.0)
  nudged = jnp.nextafter(x, jnp.full_like(x, jnp.inf))
  return float(jnp.max(jnp.abs(energy(nudged) - energy(x)))) / temperature


def test_metropolis_decisions_are_not_float_rounding_where_mala_and_hmc_are_allowed():
  # toy2d's T = 1 and the lowest allowed T: one ulp moves the log-ratio by far less than a nat
  toy = _config("toy2d", "rings", **{"langevin.sampler": "mala"})
  t_toy = langevin.temperature(toy.langevin.step_size, toy.langevin.noise_scale)
  assert t_toy == pytest.approx(1.0)
  for t in (t_toy, langevin.MIN_METROPOLIS_TEMPERATURE):
    assert _metropolis_energy_shift(t) < 0.02, t
  # the image configs' T = 0.001² / (2·100) = 5e-9: rounding alone moves it by many nats …
  image = _config("cifar10", "", **{"langevin.sampler": "mala", "data.name": "shapes"})
  t_image = langevin.temperature(image.langevin.step_size, image.langevin.noise_scale)
  assert t_image == pytest.approx(5e-9) and _metropolis_energy_shift(t_image) > 10
  # … so MALA and HMC are refused there, in training and at test time, with one clear line
  from ebm_jax import config_lib  # pylint: disable=import-outside-toplevel
  for sampler in ("mala", "hmc"):
    image.langevin.sampler = sampler
    with pytest.raises(config_lib.UserError, match="float32 rounding"):
      config_lib.validate(image)
  toy.sample.step_size = 1e4  # the test-time λ alone puts T at 5e-5
  with pytest.raises(config_lib.UserError, match="sample.step_size"):
    config_lib.validate(toy)
  chain = settings_lib.ChainSettings(step_size=100.0, noise_scale=0.001, sampler="hmc")
  with pytest.raises(config_lib.UserError, match="float32 rounding"):
    langevin.kernel(lambda z: jnp.zeros((z.shape[0], 1)), chain)


def test_mala_accepts_small_steps_and_rejects_huge_ones():
  # sigma^2 = 2 lambda: the target is exp(-E), N(0.5, 1)
  _, small = _run("mala", 1e-4, np.sqrt(2e-4), n=500, steps=50)
  _, huge = _run("mala", 25.0, np.sqrt(50.0), n=500, steps=50)
  assert small.mean() > 0.98, small.mean()
  assert huge.mean() < 0.05, huge.mean()


def _mala_acceptance(lam: float, sigma: float, mu: float = 0.5, n: int = 1_000_000) -> float:
  """E[min(1, r)] at stationarity for the 1-D target N(mu, 1) (T = σ²/2λ = 1), by Monte Carlo
  in numpy from the MALA formulas: y = m(x) + σε, m(z) = z − λ(z − mu),
  log r = −(E(y) − E(x)) − (x − m(y))²/2σ² + (y − m(x))²/2σ²."""
  rng = np.random.default_rng(7)
  x = rng.normal(mu, 1.0, n)
  energy, mean = (lambda z: (z - mu) ** 2 / 2), (lambda z: z - lam * (z - mu))
  y = mean(x) + sigma * rng.normal(size=n)
  log_r = (-(energy(y) - energy(x)) - (x - mean(y)) ** 2 / (2 * sigma ** 2)
           + (y - mean(x)) ** 2 / (2 * sigma ** 2))
  return float(np.exp(np.minimum(log_r, 0.0)).mean())


def test_mala_keeps_the_target_where_unadjusted_langevin_is_biased():
  # lambda = s^2 / 2: the unadjusted chain's stationary variance is s^2 / 3 (closed form for
  # this kernel, which adds the noise before the gradient step); MALA's is exactly s^2.
  lam = 0.5
  x_mala, acc = _run("mala", lam, np.sqrt(2 * lam))
  x_ula, ula_acc = _run("ula", lam, np.sqrt(2 * lam))
  assert np.all(ula_acc == 1.0)
  # the acceptance rate is the stationary expectation of min(1, r) (0.92 here), computed apart;
  # the chains start at 0, half a standard deviation off, and mix within a few steps
  expected = _mala_acceptance(lam, np.sqrt(2 * lam))
  assert abs(acc[20:].mean() - expected) < 0.01, (acc[20:].mean(), expected)
  assert abs(x_mala.mean() - 0.5) < 0.06 and abs(x_mala.var() - 1.0) < 0.08, (
      x_mala.mean(), x_mala.var())
  assert abs(x_ula.var() - 1.0 / 3.0) < 0.04, x_ula.var()


def test_mala_never_leaves_the_box():
  """Proposals outside [0, 1] are rejected, never clipped: one step from the same state and key
  accepts, in the box, exactly where the unbounded kernel accepts and the proposal (rebuilt
  here: x − λ∇E(x) + σ·noise of the kernel's proposal key) lies inside."""
  energy, lam, sigma = _gaussian(0.5, 0.3), 0.02, 0.2
  boxed = langevin.build_kernel(energy, lam, x_range=(0.0, 1.0), sampler="mala")
  free = langevin.build_kernel(energy, lam, x_range=None, sampler="mala")
  x0 = jax.random.uniform(jax.random.key(1), (256, 4))
  state, infos = langevin.run_chain(boxed, jax.random.key(2), x0, 50, sigma)
  assert float(state.x.min()) >= 0.0 and float(state.x.max()) <= 1.0
  key = jax.random.key(3)
  (b_state, b_info), (f_state, f_info) = (k(key, langevin.init(x0), sigma) for k in (boxed, free))
  x = np.asarray(x0, np.float64)
  noise = np.asarray(langevin.row_normal(jax.random.split(key)[0], x0), np.float64)
  proposal = x - lam * (x - 0.5) / 0.09 + sigma * noise
  inside = np.all((proposal >= 0.0) & (proposal <= 1.0), axis=-1)
  free_accept = np.asarray(f_info.accepted) == 1.0
  np.testing.assert_array_equal(np.asarray(b_info.accepted) == 1.0, free_accept & inside)
  assert (free_accept & ~inside).sum() > 5 and (free_accept & inside).sum() > 5  # both cases
  np.testing.assert_allclose(np.asarray(f_state.x)[free_accept], proposal[free_accept],
                             atol=1e-5)


# ------------------------------------------------------------------------------------- JEM


def test_jem_energies_are_minus_logsumexp_and_minus_the_class_logit():
  cfg = _config("jem_fashion_mnist", "tiny").model
  model = models.make_model(cfg, (28, 28, 1), 10)
  x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1))
  params = model.init(jax.random.key(1), x)
  logits = np.asarray(model.apply(params, x, method=models.JEMEnergy.logits), np.float64)
  assert logits.shape == (5, 10)
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  np.testing.assert_allclose(np.asarray(model.apply(params, x))[:, 0], -lse, rtol=1e-5)
  y = jax.nn.one_hot(jnp.array([3, 0, 9, 3, 1]), 10)
  np.testing.assert_allclose(np.asarray(model.apply(params, x, y))[:, 0],
                             -logits[np.arange(5), [3, 0, 9, 3, 1]], rtol=1e-5)


def test_jem_classifier_head_trains_on_a_toy_problem():
  cfg = _config("jem_fashion_mnist", "tiny").model
  model = models.make_model(cfg, (8, 8, 1), 2)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 64)
  x = jnp.asarray(0.3 + 0.4 * labels[:, None, None, None] + 0.1 * rng.normal(size=(64, 8, 8, 1)),
                  jnp.float32)
  y = jax.nn.one_hot(labels, 2)
  params = model.init(jax.random.key(0), x[:1])
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def ce(p):
    logits = model.apply(p, x, method=models.JEMEnergy.logits)
    return optax.softmax_cross_entropy(logits, y).mean()

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(ce)(p)
    u, o = tx.update(g, o)
    return optax.apply_updates(p, u), o, loss

  first = float(ce(params))
  for _ in range(40):
    params, opt, _ = step(params, opt)
  assert float(ce(params)) < 0.3 * first, (first, float(ce(params)))


def test_jem_needs_labels_and_a_single_scale():
  cfg = _config("jem_fashion_mnist", "tiny").model
  with pytest.raises(ValueError, match="labelled data"):
    models.make_model(cfg, (28, 28, 1), 0)
  cfg.multiscale = True
  with pytest.raises(ValueError, match="single-scale"):
    models.make_model(cfg, (28, 28, 1), 10)


# --------------------------------------------------------------------------------- KL sign


def test_right_kl_is_the_negated_paper_kl():
  cfg = _config("digits", "tiny", **{"loss.ent_min_buffer": 0})
  model = models.make_model(cfg.model, (8, 8, 1))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  energy = lambda p, x, y: model.apply({"params": p}, x, y)
  k = jax.random.split(jax.random.key(1), 4)
  x = jax.random.uniform(k[0], (6, 8, 8, 1))
  kl = losses.KLInputs(x_noised=x, x0=x, chain_key=k[1], labels=None)
  args = dict(x_pos=jax.random.uniform(k[2], x.shape), y_pos=None, x_neg=x, y_neg=None, kl=kl,
              ent_refs=jax.random.uniform(k[3], (10, 8, 8, 1)), ent_active=jnp.array(True))
  _, paper = losses.icd_loss(params, energy, **_settings(cfg), **args)
  cfg.loss.kl_form = "right"
  _, right = losses.icd_loss(params, energy, **_settings(cfg), **args)
  for term in ("opt", "ent", "kl"):
    assert float(paper[term]) != 0.0
    np.testing.assert_allclose(float(right[term]), -float(paper[term]), rtol=1e-6)
  np.testing.assert_allclose(float(right["cd"]), float(paper["cd"]))


# ------------------------------------------------------------------- true CD and regimes


def test_true_cd_buffer_holds_training_images_at_initialisation():
  cfg = _config("true_cd", "digits,tiny")
  setup = train.Setup(cfg)
  state = setup.fresh_state()
  buf = state.buffer
  assert int(buf.size) == cfg.buffer.capacity
  stored = np.asarray(buffer_lib.decode(jax.random.key(0), buf.data)).reshape(len(buf.data), -1)
  train_images = data_lib.load_arrays(cfg.data, 10**6, split="train")["image"]
  levels = setup.info.levels
  train_unit = train_images.reshape(len(train_images), -1).astype(np.float64) / levels
  # each item is a dequantised training image: within one level (+ 8-bit storage) of one
  dist = np.abs(stored[:, None, :] - train_unit[None, :, :]).max(-1).min(1)
  assert dist.max() <= 1.0 / levels + 1.0 / 256 + 1e-6, dist.max()
  # ... which uniform noise is not
  noise = np.random.default_rng(0).uniform(size=(8, stored.shape[1]))
  assert np.abs(noise[:, None] - train_unit[None]).max(-1).min(1).min() > 0.3
  # the plain config starts empty
  assert int(train.Setup(_config("digits", "tiny")).fresh_state().buffer.size) == 0


# Each regime compiles a step of its own: one in the default run, the rest with
# `pytest -m slow` (IGEBM and JEM steps are also recomputed by tests/test_step_oracle.py).
_SLOW = pytest.mark.slow
REGIMES = [
    pytest.param("igebm_fashion_mnist", "tiny", {}, marks=_SLOW),
    pytest.param("igebm_cifar10", "tiny", {"data.name": "shapes"}, marks=_SLOW),
    ("true_cd", "digits,tiny", {}),
    pytest.param("true_cd", "digits,shortrun,right_kl,tiny", {}, marks=_SLOW),
    pytest.param("true_cd", "paper_kl,elastic,tiny", {}, marks=_SLOW),
    pytest.param("fashion_mnist", "elastic,tiny", {}, marks=_SLOW),
    pytest.param("digits", "tiny", {"langevin.sampler": "mala", "langevin.step_size": 1e-4,
                                    "langevin.noise_scale": 0.01}, marks=_SLOW),
    pytest.param("jem_fashion_mnist", "tiny", {}, marks=_SLOW),
    pytest.param("toy2d", "rings,tiny", {"langevin.sampler": "hmc", "langevin.leapfrog_steps": 3},
                 marks=_SLOW),
]


@pytest.mark.parametrize("name,variant,overrides", REGIMES)
def test_each_regime_trains_a_few_steps(name, variant, overrides, fashion_mnist_dir):
  cfg = _config(name, variant, **overrides)
  if cfg.data.name == "fashion_mnist":
    cfg.data.path = fashion_mnist_dir
  setup = train.Setup(cfg)
  state = setup.fresh_state()
  stream = setup.stream(0)
  for _ in range(2):
    state, metrics, _ = setup.step_fn(state, setup.global_batch(next(stream)))
  m = jax.device_get(metrics)
  assert bool(m["finite"]) and int(state.step) == 2
  # each regime's defining settings (the oracle, tests/test_step_oracle.py, shows that the data
  # replacement, restarts, the FIFO, spectral norm and JEM's cross-entropy act as wired)
  defining = {
      "igebm": dict(conv="spectral", kind="fifo", clip=0.01, kl=False, augment=False),
      "true_cd": dict(init="data", data_prob=0.1, restart=0.0),
      "shortrun": dict(restart=1.0, data_prob=0.0),
      "right_kl": dict(kl=True, form="right"), "paper_kl": dict(kl=True, form="paper"),
      "jem": dict(jem=True, kl=True), "mala": dict(sampler="mala"), "hmc": dict(sampler="hmc"),
  }
  actual = dict(conv=cfg.model.conv, kind=cfg.buffer.kind, clip=cfg.langevin.grad_clip,
                kl=cfg.loss.opt and cfg.loss.ent, augment=cfg.buffer.augment,
                init=cfg.buffer.init, data_prob=cfg.buffer.data_prob,
                restart=cfg.buffer.noise_restart_prob, form=cfg.loss.kl_form,
                jem=cfg.model.jem, sampler=cfg.langevin.sampler)
  tags = [t for t in ("igebm", "jem") if t in name] + [
      t for t in ("shortrun", "right_kl", "paper_kl") if t in variant]
  tags += ["true_cd"] if name == "true_cd" and "shortrun" not in variant else []
  tags += [overrides["langevin.sampler"]] if "langevin.sampler" in overrides else []
  assert tags or "elastic" in variant, name
  if name == "true_cd" and "_kl" not in variant:
    assert not (cfg.loss.opt or cfg.loss.ent) and not cfg.buffer.augment  # no ICD tricks
  for tag in tags:
    for field, value in defining[tag].items():
      assert actual[field] == value, (name, variant, tag, field, actual[field])
  if "elastic" in variant:
    assert cfg.augment.elastic_alpha > 0 and cfg.buffer.augment and cfg.sample.augment
    assert cfg.augment.crop_scale == (1.0, 1.0) and not cfg.augment.flip
  if cfg.langevin.sampler == "ula":
    assert float(m["langevin_accept_rate"]) == 1.0
  else:  # an adjusted chain that moved (its rate against closed forms: the MALA tests above)
    assert float(m["langevin_accept_rate"]) > 0.0
  if cfg.model.jem:
    assert "loss_ce" in m and 0.0 <= float(m["train_accuracy"]) <= 1.0
  if not (cfg.loss.opt or cfg.loss.ent):
    assert float(m["loss_kl"]) == 0.0
  if cfg.buffer.noise_restart_prob == 1.0:
    assert float(m["restart_fraction"]) == 1.0


# ------------------------------------------------------------------------------ ablation


def test_ablation_rows_are_cumulative_and_multiscale_is_na_for_one_scale_nets():
  rows = ablation.row_configs(_config("digits", "tiny"))
  names = [r[0] for r in rows]
  assert names == list(ablation.ROW_NAMES)
  by = dict((r[0], r[2]) for r in rows)
  assert not by["base"].loss.opt and by["base"].buffer.kind == "fifo"
  assert not by["base"].buffer.augment and by["+aug"].buffer.augment
  assert by["+L_ent"].loss.opt and by["+L_ent"].loss.ent
  assert isinstance(by["+multiscale"], str) and "one scale" in by["+multiscale"]
  assert by["+reservoir"].buffer.kind == "reservoir" and not by["+reservoir"].loss.kl_all_steps
  assert by["+kl_all"].loss.kl_all_steps
  cifar = dict((r[0], r[2]) for r in ablation.row_configs(_config("cifar10", "tiny")))
  assert not cifar["+L_ent"].model.multiscale and cifar["+multiscale"].model.multiscale


@pytest.mark.slow  # three runner processes, classifier training, the FID network's compile
def test_ablation_runner_writes_its_table_and_skips_finished_rows(tmp_path):
  """Two rows with the FID of 12 samples per row (the network's weights random here, the test
  split's statistics cached beforehand as a finished run would have left them), a rerun that
  skips them, and a row that diverges."""
  from conftest import write_random_inception_weights  # pylint: disable=import-outside-toplevel
  from ebm_jax.configs import digits  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import fid, inception  # pylint: disable=import-outside-toplevel
  workdir, cache = tmp_path / "abl", tmp_path / "cache"
  weights = str(cache / inception.WEIGHTS_NAME)
  write_random_inception_weights(weights)
  ref = fid.stats_cache_path(str(cache), data_lib.as_settings(digits.get_config("tiny").data),
                             "test", 0, fid.Network(inception.load_params(weights)).fingerprint)
  fid.save_stats(ref, fid.Stats(np.random.default_rng(0).normal(size=2048), np.eye(2048), 297))
  args = [sys.executable, "-m", "ebm_jax.experiments.ablation",
          "--config=configs/digits.py:tiny", f"--workdir={workdir}", "--rows=base,+L_opt",
          "--steps=2", "--num=130", f"--cache_dir={cache}", "--gap_bound=1e6", "--fid_num=12"]
  args.append("--classifier_steps=100")
  proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (workdir / "ablation.md").read_text()
  assert "| base |" in table and "| +L_opt |" in table and "stable" in table
  assert "FID ↓ (12 samples vs test)" in table
  assert (workdir / "energy_gap.png").stat().st_size > 0
  summary = json.loads((workdir / "ablation.json").read_text())["rows"]
  assert [s["row"] for s in summary] == ["base", "+L_opt"]
  assert all(s["frechet_distance"] > 0 and 0 <= s["ood_auroc_mean"] <= 1 for s in summary)
  assert all(s["fid"] > 0 and s["fid_num"] == 12 for s in summary)
  assert summary[0]["fid"] != summary[1]["fid"]  # other rows, other samples
  assert os.listdir(cache / "fid_stats") == [os.path.basename(ref)]  # read, not recomputed
  args.remove("--fid_num=12")
  done = workdir / "base" / "seed_0" / "row_result.json"
  stamp = done.stat().st_mtime_ns
  proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "finished earlier, skipped" in proc.stderr
  assert done.stat().st_mtime_ns == stamp
  # a bound every step exceeds: the row is reported diverged, with the step
  args[4] = f"--workdir={tmp_path / 'diverging'}"
  args += ["--rows=base", "--gap_bound=1e-9", "--gap_patience=1"]
  proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads((tmp_path / "diverging" / "ablation.json").read_text())["rows"][0]
  assert row["verdict"].startswith("diverged (1/1: energies") and "at step 1" in row["verdict"]


# -------------------------------------------------------------------------- IGEBM optimiser


def _igebm_adam_numpy(grads, lr, b1, b2, eps):
  """openai/ebm_code_release custom_adam.py, `_apply_dense`, step by step: the gradient is
  clipped to ±(3 sqrt(v / (1 − β₂ᵗ)) + 0.1) with v before the step, then TF's apply_adam."""
  w = np.zeros_like(grads[0]); m = np.zeros_like(w); v = np.zeros_like(w)
  p1, p2 = b1, b2  # beta1_power, beta2_power start at β (t = 1)
  out = []
  for g in grads:
    bound = 3 * np.sqrt(v / (1 - p2)) + 0.1
    g = np.clip(g, -bound, bound)
    lr_t = lr * np.sqrt(1 - p2) / (1 - p1)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    w = w - lr_t * m / (np.sqrt(v) + eps)
    p1, p2 = p1 * b1, p2 * b2
    out.append(w.copy())
  return out


def test_the_igebm_optimiser_is_igebms_clipped_adam():
  cfg = _config("igebm_fashion_mnist", "tiny").optim
  assert (cfg.name, cfg.b1, cfg.b2, cfg.grad_clip_norm) == ("igebm", 0.0, 0.999, 0.0)
  rng = np.random.default_rng(0)
  # large outliers after small gradients: the 3-sigma clip must act
  grads = [rng.normal(size=6) * (30.0 if t in (3, 6) else 1.0) for t in range(8)]
  expected = _igebm_adam_numpy(grads, cfg.learning_rate, cfg.b1, cfg.b2, 1e-12)
  cfg.eps = 1e-12
  tx = state_lib.make_optimizer(cfg, 8)
  w = jnp.zeros(6)
  opt = tx.init(w)
  for g, want in zip(grads, expected):
    u, opt = tx.update(jnp.asarray(g, jnp.float32), opt, w)
    w = optax.apply_updates(w, u)
    np.testing.assert_allclose(np.asarray(w), want, rtol=2e-4, atol=1e-9)


def test_the_cosine_schedule_decays_the_learning_rate_to_its_final_fraction():
  cfg = _config("digits", "tiny").optim
  cfg.schedule, cfg.final_lr_fraction, cfg.grad_clip_norm = "cosine", 0.1, 0.0
  cfg.b1, cfg.b2 = 0.0, 0.0  # Adam's step is then lr · sign(g)
  tx = state_lib.make_optimizer(cfg, 10)
  opt = tx.init(jnp.zeros(1))
  steps = []
  for _ in range(11):
    u, opt = tx.update(jnp.ones(1), opt)
    steps.append(-float(u[0]))
  lr = cfg.learning_rate
  expected = [lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(t, 10) / 10))) for t in range(11)]
  np.testing.assert_allclose(steps, expected, rtol=1e-4)
