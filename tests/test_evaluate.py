"""Evaluation: the Fréchet distance against closed forms, AUROC and coverage at their known
values, composition operators against direct evaluation, OOD sets, the feature classifier, and
the `evaluate` / `compose` CLIs on a workdir from a tiny training run."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.configs import digits
from ebm_jax import composition, config_lib, models, restore
from ebm_jax import data as data_lib
from ebm_jax.errors import UserError
from ebm_jax.settings import Settings
from ebm_jax.eval import features, neighbours, ood, stats

import clirun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rotation(d: int, seed: int) -> np.ndarray:
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q


def test_nearest_neighbours_match_a_brute_force_search():
  """The chunked screen finds the same k rows as the full distance matrix, with the distances
  recomputed exactly, and a query equal to a reference finds it at distance 0."""
  rng = np.random.default_rng(0)
  refs = rng.uniform(size=(257, 6, 5, 1)).astype(np.float32)
  queries = np.concatenate([rng.uniform(size=(9, 6, 5, 1)), refs[[17, 200]]]).astype(np.float32)
  full = np.sqrt(((queries.reshape(11, 1, -1).astype(np.float64)
                   - refs.reshape(1, 257, -1)) ** 2).sum(-1))
  want = np.argsort(full, axis=1)[:, :7]
  for chunk in (5, 64, 10_000):  # chunk boundaries inside and beyond the k rows
    idx, dist = neighbours.nearest(queries, refs, 7, chunk=chunk)
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), rtol=1e-12)
  assert list(idx[-2:, 0]) == [17, 200] and np.all(dist[-2:, 0] == 0)
  for bad, message in [((queries, refs, 0), "k=0"), ((queries, refs, 258), "k=258"),
                       ((queries[:, :3], refs, 2), "values against"),
                       ((queries[:0], refs, 2), "needs queries"),
                       ((np.where(queries > 0.5, np.nan, queries), refs, 2), "NaN")]:
    with pytest.raises(UserError, match=message):
      neighbours.nearest(*bad)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
  rng = np.random.default_rng(0)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a, b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
  r = _rotation(d, 1)
  s1, s2 = r @ np.diag(a) @ r.T, r @ np.diag(b) @ r.T  # commuting: (S1 S2)^½ = R √(ab) Rᵀ
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert stats.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
  # 1-D: (m1 - m2)² + (s1 - s2)²; identical Gaussians: 0
  assert stats.frechet_distance(1.0, 4.0, -1.0, 1.0) == pytest.approx(4.0 + 1.0)
  assert abs(stats.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


def test_frechet_distance_of_non_commuting_covariances_matches_the_2x2_closed_form():
  # For 2x2 SPD A, B: tr((AB)^½) = sqrt(tr(AB) + 2 sqrt(det(AB))).
  a = np.array([[2.0, 0.3], [0.3, 0.5]])
  b = np.array([[1.0, -0.4], [-0.4, 1.5]])
  ab = a @ b
  expected = np.trace(a) + np.trace(b) - 2 * np.sqrt(np.trace(ab) + 2 * np.sqrt(np.linalg.det(ab)))
  assert stats.frechet_distance(np.zeros(2), a, np.zeros(2), b) == pytest.approx(expected,
                                                                                    rel=1e-8)


def test_frechet_distance_of_singular_covariances_matches_the_rank_one_closed_form():
  # Σ₁ = uuᵀ, Σ₂ = wwᵀ in 5-D (rank 1, not commuting): Σ₁Σ₂ = (u·w) u wᵀ has the one non-zero
  # eigenvalue (u·w)², so tr (Σ₁Σ₂)^½ = |u·w|. Exact, and without scipy's singular-matrix
  # warning (a feature that never fires makes a singular covariance; issue: bad input).
  rng = np.random.default_rng(3)
  u, w = rng.normal(size=5), rng.normal(size=5)
  expected = u @ u + w @ w - 2 * abs(u @ w)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = stats.frechet_distance(np.zeros(5), np.outer(u, u), np.zeros(5), np.outer(w, w))
  assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_frechet_distance_from_samples_converges_to_the_closed_form():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(200_000, 3)) * [1.0, 2.0, 0.5]
  y = rng.normal(size=(200_000, 3)) * [1.0, 1.0, 1.0] + [1.0, 0.0, 0.0]
  expected = 1.0 + (2.0 - 1.0) ** 2 + (0.5 - 1.0) ** 2
  got = stats.frechet_distance(*stats.gaussian_stats(x), *stats.gaussian_stats(y))
  assert got == pytest.approx(expected, abs=0.03)


def test_auroc_is_one_when_separable_and_one_half_for_identical_distributions():
  rng = np.random.default_rng(0)
  assert stats.auroc(rng.uniform(2, 3, 500), rng.uniform(0, 1, 500)) == 1.0
  assert stats.auroc(rng.uniform(0, 1, 500), rng.uniform(2, 3, 500)) == 0.0
  # identical distributions: AUROC ~ 0.5 with standard error sqrt((n1+n2+1)/(12 n1 n2)) = 0.0058
  assert abs(stats.auroc(rng.normal(size=5000), rng.normal(size=5000)) - 0.5) < 0.025


def test_class_coverage_of_uniform_and_collapsed_predictions():
  uniform = stats.class_coverage(np.arange(1000) % 10, 10)
  assert uniform["entropy"] == pytest.approx(np.log(10)) and uniform["classes_present"] == 10
  collapsed = stats.class_coverage(np.full(1000, 3), 10)
  assert collapsed["entropy"] == 0.0 and collapsed["classes_present"] == 1
  assert collapsed["histogram"][3] == 1000


def _conditional_model():
  config = digits.get_config("tiny")  # a small conditional net: the algebra is what is tested
  shape = (8, 8, 1)
  model = models.make_model(config.model, shape, 3)
  x = jax.random.uniform(jax.random.key(0), (4,) + shape)
  y0 = jnp.zeros((1, 3))
  variables = [model.init(jax.random.key(s), x[:1], y0) for s in (1, 2)]
  return config, model, variables, x


def test_composition_equals_the_energies_evaluated_directly():
  config, model, (v1, v2), x = _conditional_model()
  info = type("Info", (), {"num_classes": 3, "class_names": ("circle", "square", "triangle"),
                           "shape": x.shape[1:]})()
  c1 = composition.Component(restore.Run.of(config, info, model, v1), 0, "a")
  c2 = composition.Component(restore.Run.of(config, info, model, v2), 2, "b")
  onehot = lambda k: jnp.zeros((4, 3)).at[:, k].set(1.0)
  e1 = model.apply(v1, x, onehot(0)).sum(-1)
  e2 = model.apply(v2, x, onehot(2)).sum(-1)
  fns = [c1.energy, c2.energy]
  np.testing.assert_allclose(composition.composed_energy(fns, "and")(x), e1 + e2, rtol=1e-5)
  np.testing.assert_allclose(composition.composed_energy(fns, "not", alpha=0.5)(x), e1 - 0.5 * e2,
                             rtol=1e-5)
  t = 0.7
  soft_min = -t * np.log(np.exp(-np.asarray(e1) / t) + np.exp(-np.asarray(e2) / t))
  np.testing.assert_allclose(composition.composed_energy(fns, "or", temperature=t)(x), soft_min,
                             rtol=1e-5)
  # a low temperature turns `or` into the minimum
  np.testing.assert_allclose(composition.combine([e1, e2], "or", temperature=1e-4),
                             np.minimum(e1, e2), atol=1e-3)


def test_a_run_is_one_value_whose_flag_overrides_are_a_new_value():
  """restore.Run: its settings are the typed value of its config; `with_sample` (what the
  chain flags build) gives a new Run and leaves the run and its saved config as they were;
  `energy_fn` is the head-summed energy; held-out images read the same from either form of
  the data section."""
  config, model, (v1, _), x = _conditional_model()
  info = type("Info", (), {"num_classes": 3, "class_names": ("a", "b", "c"),
                           "shape": x.shape[1:]})()
  run = restore.Run.of(config, info, model, v1, step=7)
  assert run.settings == Settings.from_config(config) and run.step == 7
  changed = run.with_sample(step_size=2.0, final_steps=1)
  assert (changed.settings.sample.step_size, changed.settings.sample.final_steps) == (2.0, 1)
  assert run.settings == Settings.from_config(config)
  assert float(config.sample.step_size) != 2.0 and changed.config is config
  assert run.with_sample() is run
  y = jnp.zeros((4, 3)).at[:, 1].set(1.0)
  np.testing.assert_allclose(jax.jit(run.energy_fn())(x, y), model.apply(v1, x, y).sum(-1),
                             rtol=1e-6)
  images, labels = data_lib.test_images(digits.get_config().data, 20, seed=4)
  typed, typed_labels = data_lib.test_images(
      Settings.from_config(digits.get_config()).data, 20, seed=4)
  np.testing.assert_array_equal(images, typed)
  np.testing.assert_array_equal(labels, typed_labels)


def test_ood_sets_have_the_model_shape_and_range(tmp_path):
  test = np.random.default_rng(0).uniform(size=(20, 28, 28, 1)).astype(np.float32)
  for name in ood.OOD_SETS:
    x = ood.ood_images(name, (28, 28, 1), test, 20)
    assert x.shape == (20, 28, 28, 1) and x.dtype == np.float32, name
    assert 0.0 <= x.min() and x.max() <= 1.0, name
  np.testing.assert_array_equal(ood.ood_images("flip_v", (28, 28, 1), test, 5),
                                test[:5, ::-1])
  rgb = np.random.default_rng(1).integers(0, 256, (7, 40, 40, 3), dtype=np.uint8)
  np.savez(tmp_path / "mine.npz", images=rgb)
  x = ood.ood_images(str(tmp_path / "mine.npz"), (28, 28, 1), test, 20)
  assert x.shape == (7, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
  np.savez(tmp_path / "bad.npz", images=rgb.astype(np.float32))  # floats beyond [0, 1]
  with pytest.raises(config_lib.UserError, match=r"\[0, 1\]"):
    ood.ood_images(str(tmp_path / "bad.npz"), (28, 28, 1), test, 20)
  with pytest.raises(config_lib.UserError, match="unknown set"):
    ood.ood_images("svhn_please", (28, 28, 1), test, 20)


def test_feature_classifier_learns_digits_and_survives_the_cache(tmp_path):
  cfg = digits.get_config().data
  net = features.train_classifier(cfg, steps=300, log=lambda _: None)
  assert net.meta["test_accuracy"] > 0.85, net.meta  # chance: 0.1
  features.save_classifier(net, str(tmp_path))
  loaded = features.load_classifier(cfg, "", str(tmp_path))
  x, _ = data_lib.test_images(digits.get_config().data, 50)
  np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
  assert loaded.features(x).shape == (50, 128)
  with pytest.raises(config_lib.UserError, match="evaluate classifier --data=digits"):
    features.load_classifier(cfg, "", str(tmp_path / "empty"))


def test_evaluate_cli_on_a_trained_workdir(digits_workdir, tmp_path):
  """Every `evaluate` command of the README in one process (tests/clirun.py), and its
  mistakes: one line, exit code 2, no traceback."""
  cache, out = tmp_path / "cache", tmp_path / "out"
  w = f"--workdir={digits_workdir}"
  cases = {
      "no_classifier": ["quality", w],
      "classifier": ["classifier", "--data=digits", "--classifier_steps=120"],
      "quality": ["quality", w, "--num=150", "--steps=5", f"--out={out}_q.json"],
      "along": ["quality", w, "--num=150", "--steps=6", "--eval_every=3", f"--out={out}_a.json"],
      "too_few": ["quality", w, "--num=100"],
      "ood": ["ood", w, "--num=100", "--ood=uniform,constant,flip_v", f"--out={out}_o.json"],
      "export": ["export", w, "--num=6", "--steps=3", f"--out={out}_export"],
      "neighbours": ["neighbours", w, "--num=3", "--neighbours=4", "--steps=3",
                     f"--png={out}_n.png", f"--out={out}_n.json"],
      "no_neighbours": ["neighbours", w, "--neighbours=0"],
      "nonsense": ["nonsense"],
      "unknown_set": ["ood", w, "--ood=svhn"],
      "no_workdir": ["quality"],
      "bad_data": ["classifier", "--data=cifar10"],
      "no_checkpoint": ["ood", "--workdir=/nonexistent/run"],
      "accuracy_not_jem": ["accuracy", w],
  }
  results = dict(zip(cases, clirun.run_cli("ebm_jax.evaluate", list(cases.values()),
                                           env={"EBM_JAX_CACHE": str(cache)})))
  for name in ("classifier", "quality", "along", "ood", "export", "neighbours"):
    assert results[name]["code"] == 0, (name, results[name]["stderr"][-2000:])
  q = json.loads(open(f"{out}_q.json").read())
  assert q["num_samples"] == 150 and q["frechet_distance"] > 0
  assert 0 <= q["coverage"]["entropy"] <= np.log(10) + 1e-9
  assert q["classifier_test_accuracy"] > 0.5
  # a barely trained tiny model's samples are further from the data than held-out data is
  assert q["frechet_distance"] > q["frechet_distance_train_vs_test"]
  rows = json.loads(open(f"{out}_a.json").read())["along_chain"]
  assert [r["step"] for r in rows] == [3, 6] and all(r["frechet_distance"] > 0 for r in rows)
  result = json.loads(open(f"{out}_o.json").read())
  assert set(result["sets"]) == {"uniform", "constant", "flip_v"}
  # the sign of the score: test digits are more likely than uniform noise under a trained model
  assert result["sets"]["uniform"]["auroc"] > 0.9, result
  assert "| uniform |" in results["ood"]["stdout"]
  with np.load(f"{out}_export/samples.npz") as f:
    assert f["images"].shape == (6, 8, 8, 1) and f["images"].dtype == np.uint8
  assert len([p for p in os.listdir(f"{out}_export") if p.endswith(".png")]) == 6
  near = json.loads(open(f"{out}_n.json").read())
  assert near["num_train"] > 100 and len(near["sample_nearest_l2"]) == 3
  assert near["sample_nearest_l2_median"] > 0 and near["test_nearest_l2_median"] > 0
  from PIL import Image  # pylint: disable=import-outside-toplevel
  # 3 rows of 1 + 4 tiles of 8 px with 1 px borders, scaled by 96 // 8
  assert Image.open(f"{out}_n.png").size == (12 * (5 * 9 + 1), 12 * (3 * 9 + 1))
  for name, message in [("no_classifier", "evaluate classifier --data=digits"),
                        ("nonsense", "give one command"), ("unknown_set", "unknown set 'svhn'"),
                        ("no_workdir", "--workdir is required"), ("bad_data", "--data='cifar10'"),
                        ("no_checkpoint", "no checkpoint"), ("accuracy_not_jem", "JEM"),
                        ("too_few", "needs more than 128 samples"),
                        ("no_neighbours", "--neighbours=0 must be >= 1")]:
    r = results[name]
    assert r["code"] == 2 and message in r["stderr"], (name, r["stderr"][-2000:])
    assert "Traceback" not in r["stderr"], (name, r["stderr"][-2000:])


def test_compose_cli_writes_samples_and_rejects_bad_labels(digits_workdir, tmp_path):
  w = digits_workdir
  ok, unconditional, one_model = clirun.run_cli("ebm_jax.compose", [
      [f"--model={w}", f"--model={w}", "--op=or", "--num=8", "--steps=4", f"--out={tmp_path}"],
      [f"--model={w}:circle", "--num=8"],
      [f"--model={w}", "--op=not"]])
  assert ok["code"] == 0, ok["stderr"][-2000:]
  with np.load(tmp_path / "or_uncond_uncond.npz") as f:
    assert f["samples"].shape == (8, 8, 8, 1)
  assert unconditional["code"] == 2 and "unconditional" in unconditional["stderr"]
  assert one_model["code"] == 2 and "two for --op=not" in one_model["stderr"]


def test_jem_accuracy_is_the_share_of_test_images_its_logits_get_right(fashion_mnist_dir):
  """eval.jem.accuracy (`evaluate accuracy`) against a count made here from the net's logits
  on the same test images, for an untrained JEM net whose EMA parameters differ from its
  initial ones (so the EMA item, not some other, must be what is scored); batches of 7 so the
  last batch is partial."""
  from ebm_jax.configs import jem_fashion_mnist  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import jem  # pylint: disable=import-outside-toplevel
  config = jem_fashion_mnist.get_config("tiny")
  config.data.path, config.data.image_size = fashion_mnist_dir, 12
  model = models.make_model(config.model, (12, 12, 1), 10)
  x, labels = data_lib.test_images(config.data, 40, seed=3)
  variables = model.init(jax.random.key(0), jnp.asarray(x[:1]))
  ema = {"params": jax.tree.map(lambda p: p * 3.0, variables["params"]),
         "model_state": {k: v for k, v in variables.items() if k != "params"}}
  logits = np.asarray(model.apply(restore.ema_variables(ema), jnp.asarray(x),
                                  method=models.JEMEnergy.logits))
  hits = np.argmax(logits, -1) == np.argmax(labels, -1)
  assert 0 < hits.sum() < len(hits) and len(set(np.argmax(logits, -1))) > 1  # not degenerate
  run = restore.Run.of(config, None, model, restore.ema_variables(ema))
  got = jem.accuracy(run, 40, seed=3, batch=7)
  assert got == {"test_accuracy": hits.sum() / 40, "num": 40}


@pytest.mark.slow  # trains a tiny JEM run of its own
def test_jem_accuracy_and_conditional_sampling_commands(fashion_mnist_dir, tmp_path):
  """README's `evaluate accuracy` on a JEM run, and `sample --label` on a conditional model."""
  from ebm_jax import train  # pylint: disable=import-outside-toplevel
  from ebm_jax.configs import jem_fashion_mnist  # pylint: disable=import-outside-toplevel
  config = jem_fashion_mnist.get_config("tiny")
  config.data.path, config.data.image_size, config.train.num_steps = fashion_mnist_dir, 12, 2
  run = str(tmp_path / "jem")
  train.train_and_evaluate(config, run)
  (acc,) = clirun.run_cli("ebm_jax.evaluate", [["accuracy", f"--workdir={run}", "--num=50",
                                                f"--out={tmp_path}/acc.json"]])
  assert acc["code"] == 0, acc["stderr"][-2000:]
  result = json.loads((tmp_path / "acc.json").read_text())
  # recomputed here: the EMA net's logits on the same 50 test images (--seed=0's subset)
  trained = restore.load(run)
  x, labels = data_lib.test_images(trained.settings.data, 50, seed=0)
  logits = np.asarray(trained.model.apply(trained.variables, x, method=models.JEMEnergy.logits))
  expected = float(np.mean(np.argmax(logits, -1) == labels.argmax(-1)))
  assert result["num"] == 50 and result["test_accuracy"] == pytest.approx(expected, abs=1e-9)
  # a conditional (class-labelled) digits model: every sample carries the requested label
  cond = digits.get_config("tiny")
  cond.data.attribute, cond.train.num_steps = "class", 2
  train.train_and_evaluate(cond, str(tmp_path / "cond"))
  (ok,) = clirun.run_cli("ebm_jax.sample", [[f"--workdir={tmp_path / 'cond'}", "--label=3",
                                             "--num=4", "--steps=3", f"--out={tmp_path}/s"]])
  assert ok["code"] == 0, ok["stderr"][-2000:]
  with np.load(next((tmp_path / "s").glob("*.npz"))) as f:
    assert list(f["labels"]) == [3, 3, 3, 3] and f["samples"].shape == (4, 8, 8, 1)
