"""The training program end to end on tiny configs: every dataset config trains and
checkpoints, the step compiles once, resume is bitwise exact, sampling from checkpoints."""

import importlib
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ebm_jax import checkpoint, config_lib, sample, train
from ebm_jax.metrics import METRICS_FILE, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(name: str, extra: str = "", **overrides):
  module = importlib.import_module(f"configs.{name}")
  c = module.get_config(",".join(t for t in (extra, "tiny") if t))
  c.data.download = False  # never reach for the network in tests
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _check_run(workdir, num_steps):
  rows = read_jsonl(os.path.join(workdir, METRICS_FILE))
  assert [r["step"] for r in rows] == list(range(1, num_steps + 1))
  for r in rows:
    for k in ("loss", "energy_pos", "energy_neg", "grad_norm", "loss_kl"):
      assert np.isfinite(r[k]), (k, r)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  assert ckpt.manager.all_steps()[-1] == num_steps
  ckpt.close()
  assert os.path.exists(os.path.join(workdir, "samples", f"step_{num_steps}.png"))


OFFLINE = [("digits", ""), ("fashion_mnist", ""), ("shapes", "color"), ("toy2d", "rings")]


@pytest.mark.parametrize("name,extra", OFFLINE)
def test_offline_configs_train_and_checkpoint(name, extra, tmp_path):
  cfg = tiny_config(name, extra)
  state = train.train_and_evaluate(cfg, str(tmp_path))
  assert int(state.step) == cfg.train.num_steps
  _check_run(str(tmp_path), cfg.train.num_steps)
  # the negatives went into the buffer: batch 8 per step
  assert int(state.buffer.size) == min(8 * cfg.train.num_steps, cfg.buffer.capacity)


TFDS = [("cifar10", ""), ("mnist", ""), ("celebahq", ""), ("lsun_bedroom", ""),
        ("celeba_attributes", "Smiling")]


@pytest.mark.parametrize("name,extra", TFDS)
def test_tfds_configs_train_under_mock_data(name, extra, tmp_path):
  cfg = tiny_config(name, extra, train__num_steps=2)
  with tfds.testing.mock_data(num_examples=16):
    state = train.train_and_evaluate(cfg, str(tmp_path))
  assert int(state.step) == 2
  _check_run(str(tmp_path), 2)


@pytest.mark.parametrize("attribute", ["", "class"])
def test_step_compiles_once(attribute):
  # spectral: model state in the carry; "class": labels through FiLM
  cfg = tiny_config("digits", model__conv="spectral", data__attribute=attribute)
  setup = train.Setup(cfg)
  state = setup.init_state()
  stream = setup.stream(0)
  for _ in range(3):
    state, metrics, _ = setup.step_fn(state, setup.global_batch(next(stream)))
  assert bool(metrics["finite"])
  assert setup.step_fn._cache_size() == 1


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_resume_is_bitwise_exact(tmp_path):
  full_dir, split_dir = str(tmp_path / "full"), str(tmp_path / "split")
  cfg = tiny_config("digits", train__num_steps=4, train__checkpoint_every=2)
  full = train.train_and_evaluate(cfg, full_dir)
  half = tiny_config("digits", train__num_steps=2, train__checkpoint_every=2)
  train.train_and_evaluate(half, split_dir)
  resumed = train.train_and_evaluate(cfg, split_dir)  # same command: resumes at step 2
  assert int(resumed.step) == 4
  for field in ("params", "ema_params", "opt_state", "buffer", "model_state"):
    assert _leaves_equal(getattr(full, field), getattr(resumed, field)), field
  strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]
  assert strip(read_jsonl(os.path.join(full_dir, METRICS_FILE))) == strip(
      read_jsonl(os.path.join(split_dir, METRICS_FILE)))
  assert not _leaves_equal(full.params, train.Setup(cfg).init_state().params)  # it trained


def test_sharded_step_equals_single_device_step():
  # 8 forced CPU devices need a fresh process (XLA reads the flag at start-up).
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharding_check.py")],
                        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "devices=8" in proc.stdout and "max_abs_diff" in proc.stdout


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("digits"))
  train.train_and_evaluate(tiny_config("digits", train__num_steps=2), workdir)
  return workdir


def test_sampling_from_a_checkpoint(trained_workdir, tmp_path):
  config, info, model, ema, step = sample.load_for_sampling(trained_workdir)
  assert step == 2 and info.shape == (8, 8, 1)
  path = sample.sample_to_files(config, model, info, ema["params"], ema["model_state"],
                                str(tmp_path), "s", num=6, steps=5)
  arrays = np.load(str(tmp_path / "s.npz"))
  assert arrays["samples"].shape == (6, 8, 8, 1)
  assert arrays["energy_per_step"].shape == (5,)
  assert 0.0 <= arrays["samples"].min() and arrays["samples"].max() <= 1.0
  assert os.path.getsize(path) > 100


def _cli(module, *args, timeout=600):
  proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)
  return proc.returncode, proc.stdout + proc.stderr


def test_sample_cli_writes_requested_count(trained_workdir, tmp_path):
  code, out = _cli("ebm_jax.sample", f"--workdir={trained_workdir}", "--num=5", "--steps=4",
                   f"--out={tmp_path}")
  assert code == 0, out[-2000:]
  files = sorted(os.listdir(tmp_path))
  assert len(files) == 2 and files[0].endswith(".npz") and files[1].endswith(".png")
  assert np.load(str(tmp_path / files[0]))["samples"].shape == (5, 8, 8, 1)


def test_sample_cli_without_checkpoint_says_so(tmp_path):
  code, out = _cli("ebm_jax.sample", f"--workdir={tmp_path}")
  assert code == 2 and "no checkpoint" in out and "Traceback" not in out


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/digits.py:tiny", "--config.train.no_such_field=1"], "no_such_field"),
    (["--config=configs/digits.py:tiny", "--config.train.batch_size=abc"], "batch_size"),
    (["--config=configs/digits.py:tiny", "--config.model.norm=batch"], "model.norm"),
    (["--config=configs/fashion_mnist.py:tiny", "--config.data.path=/no/such/folder"],
     "dataset-fashion-mnist"),
    (["--config=configs/shapes.py:tiny", "--config.data.image_size=8"], "image_size"),
    (["--config=configs/cifar10.py:tiny", "--config.data.download=False",
      "--config.data.path=/tmp/ebm_jax_no_tfds_here"], "cifar10"),
    (["--config=configs/no_such_config.py"], "no_such_config.py"),
    (["--config=configs/digits.py:huge"], "unknown config variant 'huge'"),
    (["--config=configs/digits.py:tiny", "--config.loss.kl_samples=9"], "loss.kl_samples"),
])
def test_bad_input_gives_one_clear_message(args, expected, tmp_path):
  code, out = _cli("ebm_jax.main", *args, f"--workdir={tmp_path}/w")
  assert code != 0
  assert expected in out, out[-2000:]
  assert "Traceback" not in out, out[-3000:]


def test_config_of_an_older_checkpoint_gets_fields_added_since():
  saved = json.loads(json.dumps(tiny_config("digits").to_dict()))  # as checkpoints store it
  del saved["model"]["multiscale_layout"]
  saved["train"]["batch_size"] = 16
  config = config_lib.with_defaults(saved)
  assert config.model.multiscale_layout == "code"  # the default of the current version
  assert config.train.batch_size == 16 and config.data.name == "digits"
  assert isinstance(config.augment.crop_scale, tuple)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  code, out = _cli("ebm_jax.main", "--config=configs/digits.py:tiny", f"--workdir={blocker}/w")
  assert code == 2 and "not writable" in out and "Traceback" not in out


def test_checkpoint_config_mismatch_names_the_field(trained_workdir):
  code, out = _cli("ebm_jax.main", "--config=configs/digits.py:tiny",
                   "--config.model.features=16", f"--workdir={trained_workdir}")
  assert code == 2, out[-2000:]
  assert "model.features" in out and "Traceback" not in out
