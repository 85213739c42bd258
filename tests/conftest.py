"""Test set-up: the repository root on sys.path (for `configs`), a persistent XLA compilation
cache shared by the test processes and the CLIs they start, and Fashion-MNIST-shaped data.

Many tests compile the same tiny training step (in-process and in `python -m ebm_jax.main`
subprocesses); the cache, keyed by the compiled program, lets later ones load it instead of
compiling it again. It lives in .pytest_cache/ (git-ignored); delete it to start cold.

Tests never need Debian's `dataset-fashion-mnist`: `fashion_mnist_dir` writes the four gzipped
IDX files of a Fashion-MNIST-shaped set (28×28 grey, 10 labels, black background, from
scikit-learn's digits) and tests reach it through `data.path`, as a user would. One test of the
real files skips when the package is absent (tests/test_data.py).
"""

import fcntl
import gzip
import os
import shutil
import sys
from typing import Callable

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Before jax is imported anywhere: jax reads these when it initialises its config, and the
# subprocesses the tests start inherit them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
# Compile-time flags for the tests' tiny programs, which then still run in milliseconds:
#  - XLA:CPU's LLVM backend at -O0: ~40 % faster compiles (the digits tiny training step:
#    24.8 s -> 14.8 s on a 2-core CPU);
#  - the loop emitter instead of the MLIR fusion emitters: at -O0 another third off (three of
#    the heaviest test files, cold cache: 219 -> 141 s of CPU on a 2-core Zen 3 EPYC). Not a
#    flag for users: the cifar10 step at the host programs' -O1 compiled for over 6 min with it,
#    97 s without.
# Processes that tests start with forced device counts keep them (forced_devices_env).
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# Feature classifiers that tests train are cached here, never in the user's ~/.cache/ebm_jax.
os.environ.setdefault("EBM_JAX_CACHE", os.path.join(ROOT, ".pytest_cache", "ebm_jax"))


def forced_devices_env(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment (the suite's XLA flags included) for a child process with
  `devices` forced CPU devices, and `extra` variables."""
  flags = os.environ.get("XLA_FLAGS", "")
  return dict(os.environ, **extra, XLA_FLAGS=(
      f"{flags} --xla_force_host_platform_device_count={devices}").strip())


FAKE_FASHION_TRAIN = 1500  # scikit-learn's digits: 1,797 images; the rest is the test split


def write_idx(path: str, array: np.ndarray) -> None:
  """A gzipped IDX file of uint8 data: magic 0x0000 08 ndim, big-endian dims, then the bytes."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def write_fake_fashion_mnist(folder: str) -> str:
  """The four Fashion-MNIST IDX files, made from scikit-learn's digits upscaled to 28×28 and
  stretched to 0..255 (bright shapes on black, 10 classes). Returns the folder."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  from ebm_jax import data  # pylint: disable=import-outside-toplevel
  digits = datasets.load_digits()
  images = data.resize_images(digits.images.astype(np.uint8)[..., None], 28, max_value=16)
  images = np.clip(np.rint(images[..., 0].astype(np.float32) * (255 / 16)), 0, 255)
  labels = digits.target.astype(np.uint8)
  os.makedirs(folder, exist_ok=True)
  for prefix, part in (("train", slice(None, FAKE_FASHION_TRAIN)),
                       ("t10k", slice(FAKE_FASHION_TRAIN, None))):
    write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images[part])
    write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels[part])
  return folder


def write_random_inception_weights(path: str, seed: int = 0) -> None:
  """An .npz of the FID network's shapes with random values (kernels normal / √fan-in,
  batch-norm means and β zero, variances one): a working network, not the reference one."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import inception  # pylint: disable=import-outside-toplevel
  params = jax.eval_shape(lambda: inception.InceptionV3().init(
      jax.random.key(0), jnp.zeros((1, 299, 299, 3))))["params"]
  rng = np.random.default_rng(seed)
  arrays = {}
  for p, leaf in jax.tree.leaves_with_path(params):
    key = "/".join(k.key for k in p)
    fan_in = np.prod(leaf.shape[:-1]) if key.endswith("kernel") else 1
    arrays[key] = (np.ones(leaf.shape) if key.endswith("var") else
                   rng.normal(size=leaf.shape) / np.sqrt(fan_in) * (key.endswith("kernel")))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **{k: v.astype(np.float32) for k, v in arrays.items()})


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory) -> str:
  return write_fake_fashion_mnist(str(tmp_path_factory.mktemp("fashion_mnist")))


def made_once(tmp_path_factory, name: str, make: Callable[[str], None]) -> str:
  """The folder `name`, made by make(folder) once per test session: under pytest-xdist the
  first worker to ask makes it while the others wait on a file lock, then all read it (the
  folder sits beside the workers' own temporary folders). Tests must not write into it."""
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not (path / ".done").exists():
      shutil.rmtree(path, ignore_errors=True)  # a worker that died half-way
      path.mkdir()
      make(str(path))
      (path / ".done").touch()
  return str(path)


@pytest.fixture(scope="session")
def digits_workdir(tmp_path_factory) -> str:
  """One trained tiny digits run (40 steps, checkpoints at 20 and 40, the gradient
  decomposition logged every 10 steps), shared by every test that only reads a run: sampling,
  evaluation, composition, notebooks, `ebm_jax.load`; trained once for all test processes.
  Tests must not write into it."""
  from ebm_jax import train  # pylint: disable=import-outside-toplevel
  from ebm_jax.configs import digits  # pylint: disable=import-outside-toplevel

  def make(path: str) -> None:
    config = digits.get_config("tiny")
    config.train.num_steps = 40  # enough for the energy to rank data above noise
    config.train.checkpoint_every = 20
    config.train.log_every = 5
    config.train.log_grad_terms_every = 10  # for the gradient-magnitudes notebook
    train.train_and_evaluate(config, path)
  return made_once(tmp_path_factory, "digits_run", make)


def train_tiny_2d(variant: str, steps: int, workdir: str, **data):
  """A `configs/toy2d.py:VARIANT,tiny` run of `steps` steps (data fields from `data`), trained
  in this process and read back (restore.Run)."""
  from ebm_jax import restore, train  # pylint: disable=import-outside-toplevel
  from ebm_jax.configs import toy2d  # pylint: disable=import-outside-toplevel
  c = toy2d.get_config(f"{variant},tiny")
  for field, value in data.items():
    c.data[field] = value
  c.train.num_steps = c.train.checkpoint_every = c.train.log_every = steps
  c.train.image_every = 0
  c.sample.num = c.sample.batch_size = 16
  train.train_and_evaluate(c, workdir)
  return restore.load(workdir)
