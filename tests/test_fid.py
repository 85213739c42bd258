"""The standard FID without the reference network: the input pipeline against independent
computations, the statistics and the Fréchet distance (A vs A, symmetry, a closed form), the
weight-file checks, the TorchScript-to-Flax name mapping, and `evaluate fid` end to end with
random weights (what the command does; which network it runs is tests/test_fid_reference.py's
job, where torch is installed)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.errors import UserError
from ebm_jax.eval import fid, inception, inception_convert

import clirun
from conftest import write_random_inception_weights


def _bilinear_at(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Direct 2-D bilinear sampling of an (H, W) image at every (row, col) pair, edges repeated:
  the four-neighbour formula of grid_sample, in float64."""
  h, w = image.shape
  r = np.clip(rows, 0, h - 1)[:, None]
  c = np.clip(cols, 0, w - 1)[None, :]
  r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
  r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
  fr, fc = r - r0, c - c0
  return ((1 - fr) * (1 - fc) * image[r0, c0] + (1 - fr) * fc * image[r0, c1]
          + fr * (1 - fc) * image[r1, c0] + fr * fc * image[r1, c1])


@pytest.mark.parametrize("h,w", [(28, 28), (32, 32), (128, 96), (8, 8)])
def test_resize_samples_the_source_at_j_times_w_over_299(h, w):
  image = np.random.default_rng(0).integers(0, 256, (h, w)).astype(np.float64)
  pos = np.arange(inception.SIZE) * 1.0
  expected = _bilinear_at(image, pos * h / inception.SIZE, pos * w / inception.SIZE)
  x = jnp.asarray(np.repeat(image[None, :, :, None], 3, -1), jnp.float32)
  got = np.asarray(inception.preprocess(x))[0, :, :, 0]
  expected = np.clip(expected / 255 * (1 + 127 / 128) - 1, -1, 127 / 128)
  np.testing.assert_allclose(got, expected, atol=2e-5)
  np.testing.assert_allclose(inception.resize_matrix(h).sum(1), 1.0, rtol=1e-6)


def test_input_values_and_range():
  grey = np.array([[[[0], [255]]]], np.uint8)  # (1, 1, 2, 1)
  np.testing.assert_array_equal(inception.to_uint8_values(grey)[0, 0], [[0, 0, 0], [255] * 3])
  # floats in [0, 1] are rounded as a PNG would store them; (v - 128) / 128 at the network
  x = np.array([0.0, 0.4 / 255, 0.6 / 255, 1.0], np.float32).reshape(1, 1, 4, 1)
  np.testing.assert_array_equal(inception.to_uint8_values(x)[0, 0, :, 0], [0, 0, 1, 255])
  same = inception.preprocess(jnp.full((1, 299, 299, 3), 64.0))
  np.testing.assert_allclose(np.asarray(same), (64 - 128) / 128, atol=1e-6)


@pytest.mark.parametrize("bad,message", [
    (np.full((2, 8, 8, 1), np.nan, np.float32), "NaN"),
    (np.full((2, 8, 8, 1), 1.5, np.float32), r"\[0, 1\]"),
    (np.zeros((2, 8, 8, 1), np.int32), "dtype"),
    (np.zeros((2, 8, 8, 2), np.uint8), "channels"),
    (np.zeros((0, 8, 8, 3), np.uint8), "at least one"),
])
def test_bad_images_are_refused_in_one_line(bad, message):
  with pytest.raises(UserError, match=message):
    inception.to_uint8_values(bad)


def test_statistics_fid_of_a_set_with_itself_symmetry_and_a_closed_form():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(300, 5))
  b = rng.normal(size=(200, 5)) * rng.uniform(0.5, 2.0, 5) + 0.3
  sa, sb = fid.statistics(a), fid.statistics(b)
  np.testing.assert_allclose(sa.mu, a.mean(0))
  np.testing.assert_allclose(sa.sigma, np.cov(a, rowvar=False))
  assert abs(fid.fid(sa, sa)) < 1e-9
  assert fid.fid(sa, sb) == pytest.approx(fid.fid(sb, sa), rel=1e-9)
  # diagonal Gaussians: ‖μ₁ − μ₂‖² + Σ (√a − √b)²
  va, vb = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
  ma, mb = rng.normal(size=5), rng.normal(size=5)
  closed = np.sum((ma - mb) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
  got = fid.fid(fid.Stats(ma, np.diag(va), 10), fid.Stats(mb, np.diag(vb), 10))
  assert got == pytest.approx(closed, rel=1e-9)


def test_fewer_images_than_features_is_a_warning_with_the_number():
  said = []
  fid.statistics(np.random.default_rng(0).normal(size=(40, 64)), log=said.append)
  assert len(said) == 1 and "40 images" in said[0] and "65" in said[0]
  with pytest.raises(UserError, match="NaN"):
    fid.statistics(np.full((5, 3), np.nan))
  with pytest.raises(UserError, match="at least 2"):
    fid.statistics(np.zeros((1, 3)))


def test_torchscript_names_map_to_the_flax_tree():
  params = jax.eval_shape(lambda: inception.InceptionV3().init(
      jax.random.key(0), jnp.zeros((1, 299, 299, 3))))["params"]
  flat = {"/".join(k.key for k in path) for path, _ in jax.tree.leaves_with_path(params)}
  assert len(flat) == 376  # 94 convolutions × (kernel, mean, var, β): the TorchScript's count
  for torch_key, key in [("net.layers.conv.weight", "conv/conv/kernel"),
                         ("net.layers.mixed.tower.conv_1.beta", "mixed/tower_conv_1/beta"),
                         ("net.layers.mixed_4.tower_1.conv_4.var", "mixed_4/tower_1_conv_4/var"),
                         ("net.layers.mixed_3.conv.mean", "mixed_3/conv/mean"),
                         ("net.layers.mixed_10.tower_1_mixed_conv_1.weight",
                          "mixed_10/tower_1_mixed_conv_1/conv/kernel")]:
    assert inception_convert.flax_key(torch_key) == key
    assert key in flat


def test_weight_files_are_checked(tmp_path):
  with pytest.raises(UserError, match="inception_convert"):
    inception.load_params(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "wrong.npz", **{"conv/conv/kernel": np.zeros((3, 3))})
  with pytest.raises(UserError, match="do not match"):
    inception.load_params(str(tmp_path / "wrong.npz"))


@pytest.mark.slow  # nine command runs of the Inception network on a CPU: about 80 s
def test_evaluate_fid_command(tmp_path, digits_workdir):
  weights, other = str(tmp_path / "w.npz"), str(tmp_path / "other.npz")
  write_random_inception_weights(weights)
  write_random_inception_weights(other, seed=1)
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (12, 8, 8, 1)).astype(np.uint8)
  b = (rng.uniform(size=(10, 8, 8, 1)) ** 3).astype(np.float32)
  np.savez(tmp_path / "a.npz", images=a)
  np.savez(tmp_path / "b.npz", samples=b)
  cache = str(tmp_path / "cache")
  common = [f"--inception={weights}", f"--cache_dir={cache}", "--batch=8", "--fid_batch=8"]
  cases = {
      "aa": ["fid", f"--samples={tmp_path / 'a.npz'}", f"--ref={tmp_path / 'a.npz'}", *common],
      "ab": ["fid", f"--samples={tmp_path / 'a.npz'}", f"--ref={tmp_path / 'b.npz'}",
             f"--save_stats={tmp_path / 'a_stats.npz'}", *common],
      "ab_stats": ["fid", f"--samples={tmp_path / 'b.npz'}",
                   f"--ref={tmp_path / 'a_stats.npz'}", *common],
      "run": ["fid", f"--workdir={digits_workdir}", "--num=12", "--ref=test", "--ref_num=30",
              *common],
      "run_again": ["fid", f"--workdir={digits_workdir}", "--num=12", "--ref=test",
                    "--ref_num=30", *common],
      "other_weights": ["fid", f"--workdir={digits_workdir}", "--num=12", "--ref=test",
                        "--ref_num=30", f"--inception={other}", f"--cache_dir={cache}",
                        "--batch=8", "--fid_batch=8"],
      "both": ["fid", f"--workdir={digits_workdir}", f"--samples={tmp_path / 'a.npz'}",
               *common],
      "no_data": ["fid", "--samples=train", *common],
      "no_weights": ["fid", f"--samples={tmp_path / 'a.npz'}", "--ref=test", "--data=digits",
                     f"--inception={tmp_path / 'missing.npz'}"],
  }
  # the entry points' CPU flags, as users run it (the suite's -O0 makes this network crawl)
  from ebm_jax import cli  # pylint: disable=import-outside-toplevel
  results = dict(zip(cases, clirun.run_cli("ebm_jax.evaluate", list(cases.values()),
                                           env={"EBM_JAX_CACHE": cache,
                                                "XLA_FLAGS": cli.CPU_XLA_FLAGS})))
  out = {k: json.loads(r["stdout"][r["stdout"].index("{"):]) for k, r in results.items()
         if r["code"] == 0}
  assert set(out) == {"aa", "ab", "ab_stats", "run", "run_again", "other_weights"}, {
      k: r["stderr"][-800:] for k, r in results.items() if k not in out}
  assert abs(out["aa"]["fid"]) < 1e-6 * max(1.0, out["ab"]["fid"])
  assert out["ab"]["fid"] > 0
  assert out["ab_stats"]["fid"] == pytest.approx(out["ab"]["fid"], rel=1e-9)  # symmetric
  assert out["run"]["num_samples"] == 12 and out["run"]["step"] == 40
  assert out["run"]["num_ref"] == out["run_again"]["num_ref"] == 30
  assert out["run_again"]["fid"] == pytest.approx(out["run"]["fid"], rel=1e-9)
  # computed once per weights, then read
  assert len(os.listdir(os.path.join(cache, "fid_stats"))) == 2
  assert out["other_weights"]["fid"] != out["run"]["fid"]
  assert "FID features of samples: 12/12" in results["run"]["stdout"]
  assert "fewer than the 2049" in results["aa"]["stdout"] + results["aa"]["stderr"]
  assert "not both" in results["both"]["stderr"]
  assert "needs --data" in results["no_data"]["stderr"]
  assert "inception_convert" in results["no_weights"]["stderr"]
  for r in results.values():
    assert "Traceback" not in r["stderr"]
