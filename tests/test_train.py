"""The training program end to end on tiny configs: every dataset config trains and
checkpoints, the step compiles once, resume is bitwise exact, sampling from checkpoints."""

import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import clirun
from conftest import forced_devices_env

import ebm_jax
from ebm_jax import checkpoint, cli, config_lib, images, restore, sampling, train
from ebm_jax.metrics import METRICS_FILE, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(name: str, extra: str = "", **overrides):
  module = importlib.import_module(f"ebm_jax.configs.{name}")
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


OFFLINE = [("digits", ""), ("fashion_mnist", ""),
           pytest.param("shapes", "color", marks=pytest.mark.slow),  # a CIFAR-style net
           ("toy2d", "rings")]


@pytest.mark.parametrize("name,extra", OFFLINE)
def test_offline_configs_train_and_checkpoint(name, extra, tmp_path, fashion_mnist_dir):
  cfg = tiny_config(name, extra)
  if name == "fashion_mnist":
    cfg.data.path = fashion_mnist_dir
  state = train.train_and_evaluate(cfg, str(tmp_path))
  assert int(state.step) == cfg.train.num_steps
  _check_run(str(tmp_path), cfg.train.num_steps)
  # the negatives went into the buffer: batch 8 per step
  assert int(state.buffer.size) == min(8 * cfg.train.num_steps, cfg.buffer.capacity)


# Each compiles a full training step of its net (multiscale with attention; 128² for CelebA-HQ /
# LSUN): `pytest -m slow`. The default run covers the tfds input paths under mock data
# (tests/test_data.py) and the offline configs end to end. lsun_bedroom is not here: its config
# is celebahq's (the same 128² net, loss and chain) with another data source, kl_samples = 4 and
# test-time λ = 1000, and its input path is covered under mock data in tests/test_data.py.
_SLOW = pytest.mark.slow
TFDS = [pytest.param("cifar10", "", marks=_SLOW), pytest.param("mnist", "", marks=_SLOW),
        pytest.param("celebahq", "", marks=_SLOW),
        pytest.param("celeba_attributes", "Smiling", marks=_SLOW)]


@pytest.mark.parametrize("name,extra", TFDS)
def test_tfds_configs_train_under_mock_data(name, extra, tmp_path):
  cfg = tiny_config(name, extra, train__num_steps=2)
  with tfds.testing.mock_data(num_examples=16):
    state = train.train_and_evaluate(cfg, str(tmp_path))
  assert int(state.step) == 2
  _check_run(str(tmp_path), 2)


@pytest.mark.parametrize("attribute", ["", pytest.param("class", marks=pytest.mark.slow)])
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
  # num_steps=2 stands in for an interruption at step 2; a cosine rate decays over num_steps, so
  # the stand-in needs a constant one (tests/test_survival.py interrupts cosine runs by signal)
  cfg = tiny_config("digits", train__num_steps=4, train__checkpoint_every=2,
                    optim__schedule="constant")
  full = train.train_and_evaluate(cfg, full_dir)
  half = tiny_config("digits", train__num_steps=2, train__checkpoint_every=2,
                     optim__schedule="constant")
  train.train_and_evaluate(half, split_dir)
  resumed = train.train_and_evaluate(cfg, split_dir)  # same command: resumes at step 2
  assert int(resumed.step) == 4
  for field in ("params", "ema_params", "opt_state", "buffer", "model_state"):
    assert _leaves_equal(getattr(full, field), getattr(resumed, field)), field
  strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]
  assert strip(read_jsonl(os.path.join(full_dir, METRICS_FILE))) == strip(
      read_jsonl(os.path.join(split_dir, METRICS_FILE)))
  assert not _leaves_equal(full.params, train.Setup(cfg).init_state().params)  # it trained


def _run_with_devices(script: str, devices: int) -> str:
  """Runs tests/SCRIPT in a fresh process with forced CPU devices (XLA reads the flag at
  start-up); returns its stdout."""
  env = forced_devices_env(devices, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", script)],
                        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow  # an 8-device process compiling the step twice
def test_sharded_step_equals_single_device_step():
  out = _run_with_devices("sharding_check.py", 8)
  assert "devices=8" in out and "max_abs_diff" in out and "host_chain_max_abs_diff" in out
  assert "chunked_loss_max_abs_diff" in out


@pytest.mark.slow  # a 2-device process
def test_per_device_buffers_equal_single_device_buffers():
  assert "per-device buffers equal single-device buffers" in _run_with_devices(
      "per_device_check.py", 2)


def test_per_device_buffers_are_the_default_where_the_authors_ran_them():
  from ebm_jax.configs import celebahq, cifar10, lsun_bedroom  # pylint: disable=import-outside-toplevel
  assert celebahq.get_config().buffer.per_device and lsun_bedroom.get_config().buffer.per_device
  assert not cifar10.get_config().buffer.per_device


def test_sampling_from_a_checkpoint(digits_workdir, tmp_path):
  run = restore.load(digits_workdir)
  assert run.step == 40 and run.info.shape == (8, 8, 1)
  x, diag = sampling.for_model(run.settings, run.model, run.info.shape, steps=5).draw(
      jax.random.key(0), 6, None, run.variables)
  path = images.save_samples(x, str(tmp_path), "s", energy_per_step=diag["energy"])
  arrays = np.load(str(tmp_path / "s.npz"))
  assert arrays["samples"].shape == (6, 8, 8, 1)
  assert arrays["energy_per_step"].shape == (5,)
  assert 0.0 <= arrays["samples"].min() and arrays["samples"].max() <= 1.0
  assert os.path.getsize(path) > 100


def test_sampling_uses_the_ema_parameters_and_the_saved_ema_item_is_state_ema(digits_workdir):
  """The `ema` item of a checkpoint equals the state's EMA parameters (not its parameters),
  and the sampler draws with exactly those."""
  run = restore.load(digits_workdir)
  config, model, step = run.config, run.model, run.step
  setup = train.Setup(config)
  ckpt = checkpoint.Checkpointer(digits_workdir, config, setup.info)
  state = jax.device_get(ckpt.restore_state(setup.abstract_state, setup.state_sharding))
  ckpt.close()
  assert int(state.step) == step
  assert _leaves_equal(run.variables["params"], state.ema_params)
  assert not _leaves_equal(state.ema_params, state.params)  # the two differ after training
  loaded = ebm_jax.load(digits_workdir)
  assert type(loaded) is restore.Run and loaded.step == step
  assert _leaves_equal(loaded.variables["params"], state.ema_params)
  x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype(np.float32)
  want = np.asarray(model.apply({"params": state.ema_params, **state.model_state}, x).sum(-1))
  np.testing.assert_allclose(loaded.energy(x), want, rtol=1e-6)


def test_python_api_snippet_of_the_readme_runs_as_written(digits_workdir):
  """The README's "In Python" example, extracted from README.md and executed."""
  readme = open(os.path.join(ROOT, "README.md")).read()
  start = readme.index("```python\nimport ebm_jax")
  code = readme[start + len("```python\n"):readme.index("```", start + 10)]
  namespace = {}
  exec(code.replace('"runs/digits"', repr(digits_workdir)), namespace)  # pylint: disable=exec-used
  x, e = namespace["x"], namespace["e"]
  assert x.shape == (16, 8, 8, 1) and 0.0 <= x.min() and x.max() <= 1.0
  assert e.shape == (16,) and np.all(np.isfinite(e))


def test_main_cli_mistakes_give_one_line_and_exit_code_2(digits_workdir, tmp_path,
                                                          fashion_mnist_dir):
  """Every case in one process (tests/clirun.py): exit code 2, the named field or fix, no
  traceback, and nothing written into the workdir of a rejected config."""
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  tiny = "--config=configs/digits.py:tiny"
  cases = [
      ([tiny, "--config.train.no_such_field=1"], "no_such_field"),
      ([tiny, "--config.train.batch_size=abc"], "batch_size"),
      ([tiny, "--config.model.norm=batch"], "model.norm"),
      (["--config=configs/fashion_mnist.py:tiny", "--config.data.path=/no/such/folder"],
       "dataset-fashion-mnist"),
      (["--config=configs/shapes.py:tiny", "--config.data.image_size=8"], "image_size"),
      (["--config=configs/cifar10.py:tiny", "--config.data.download=False",
        "--config.data.path=/tmp/ebm_jax_no_tfds_here"], "cifar10"),
      (["--config=configs/no_such_config.py"], "no_such_config.py"),
      (["--config=configs/digits.py:huge"], "unknown config variant 'huge'"),
      ([tiny, "--config.loss.kl_samples=9"], "loss.kl_samples"),
      ([tiny, "stray_word"], "unexpected argument"),
      ([tiny, f"--workdir={blocker}/w"], "not writable"),
      ([tiny, "--config.model.features=16", f"--workdir={digits_workdir}"], "model.features"),
  ]
  argvs = [args if any(a.startswith("--workdir") for a in args)
           else args + [f"--workdir={tmp_path}/w{i}"] for i, (args, _) in enumerate(cases)]
  for (args, expected), result in zip(cases, clirun.run_cli("ebm_jax.main", argvs)):
    said = result["stderr"]
    assert result["code"] == cli.EXIT_USER_ERROR, (args, said[-2000:])
    assert expected in said and "Traceback" not in said, (args, said[-2000:])
    assert len([l for l in said.splitlines() if l.startswith("error:")]) == 1, (args, said)
  # the mismatching config left the trained run as it was
  assert sorted(os.listdir(os.path.join(digits_workdir, "checkpoints"))) == ["20", "40"]


def test_sample_cli(digits_workdir, tmp_path):
  """`python -m ebm_jax.sample` as README shows it (--num, --steps, --step_size, --seed,
  --out), and its mistakes: no checkpoint, a label for an unconditional model, bad counts."""
  cases = [
      [f"--workdir={digits_workdir}", "--num=5", "--steps=4", "--step_size=3", "--seed=1",
       f"--out={tmp_path}/out"],
      [f"--workdir={tmp_path}/nothing"],
      [f"--workdir={digits_workdir}", "--label=3"],
      [f"--workdir={digits_workdir}", "--num=0"],
      [f"--workdir={digits_workdir}", "--step_size=-1"],
  ]
  ok, *bad = clirun.run_cli("ebm_jax.sample", cases)
  assert ok["code"] == 0, ok["stderr"][-2000:]
  files = sorted(os.listdir(tmp_path / "out"))
  assert files == ["sample_step40_seed1.npz", "sample_step40_seed1.png"]
  with np.load(tmp_path / "out" / files[0]) as f:
    assert f["samples"].shape == (5, 8, 8, 1) and f["energy_per_step"].shape == (4,)
  for result, expected in zip(bad, ["no checkpoint", "unconditional", "--num=0",
                                    "--step_size=-1.0"]):
    assert result["code"] == cli.EXIT_USER_ERROR, result
    assert expected in result["stderr"] and "Traceback" not in result["stderr"], result


def test_config_of_an_older_checkpoint_gets_fields_added_since():
  saved = json.loads(json.dumps(tiny_config("digits").to_dict()))  # as checkpoints store it
  del saved["model"]["multiscale_layout"]
  saved["train"]["batch_size"] = 16
  config = config_lib.with_defaults(saved)
  assert config.model.multiscale_layout == "code"  # the default of the current version
  assert config.train.batch_size == 16 and config.data.name == "digits"
  assert isinstance(config.augment.crop_scale, tuple)


def test_configs_load_from_outside_the_repository(tmp_path):
  """--config=<repo>/configs/digits.py:tiny from another working directory."""
  loader = ("import importlib.util, sys; "
            "spec = importlib.util.spec_from_file_location('cfg', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.get_config('digits,tiny').model.features)")
  proc = subprocess.run(
      [sys.executable, "-c", loader, os.path.join(ROOT, "configs", "true_cd.py")],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
      env=dict(os.environ, PYTHONPATH=""))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "8"


@pytest.mark.slow  # the FID network's compile at the suite's -O0 and a classifier (~2 min)
def test_quality_hook_logs_sample_quality_at_its_steps(tmp_path, monkeypatch):
  """train.eval_every: EMA samples by the test-time chain, scored at the eval steps (and the
  last), written to metrics.jsonl; the feature classifier is trained first when not cached;
  with eval.fid the FID of eval.fid_num samples (the network's weights random here)."""
  from conftest import write_random_inception_weights  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import inception  # pylint: disable=import-outside-toplevel
  from ebm_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from ebm_jax.eval import fid  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("EBM_JAX_CACHE", str(tmp_path / "cache"))
  write_random_inception_weights(str(tmp_path / "cache" / inception.WEIGHTS_NAME))
  cfg = tiny_config("digits", train__num_steps=4, train__eval_every=3, eval__num=130,
                    eval__classifier_steps=30, eval__fid=True, eval__fid_num=12)
  # the test split's statistics as if cached by an earlier run (its features cost minutes at
  # the suite's -O0): the hook must read them, not recompute them
  weights = inception.load_params(str(tmp_path / "cache" / inception.WEIGHTS_NAME))
  ref = fid.stats_cache_path(str(tmp_path / "cache"), data_lib.as_settings(cfg.data), "test", 0,
                             fid.Network(weights, batch=1).fingerprint)
  rng = np.random.default_rng(0)
  fid.save_stats(ref, fid.Stats(rng.normal(size=2048), np.eye(2048), 297))
  train.train_and_evaluate(cfg, str(tmp_path / "run"))
  rows = [r for r in read_jsonl(str(tmp_path / "run" / METRICS_FILE)) if "quality/frechet" in r]
  assert [r["step"] for r in rows] == [3, 4]
  for r in rows:
    assert r["quality/frechet"] > 0 and 0 <= r["quality/coverage_entropy"] <= np.log(10)
    assert 1 <= r["quality/classes"] <= 10
    assert 0 < r["quality/mean_pixel"] < 1 and 0 <= r["quality/saturated_frac"] <= 1
    assert r["quality/fid"] > 0 and r["quality/fid_num"] == 12
  assert rows[0]["quality/fid"] != rows[1]["quality/fid"]  # other parameters, other samples
  # training minutes, the evaluations left out: one step between the rows, which costs less
  # than the evaluation at step 3 that a wall clock would count
  gap = rows[1]["quality/train_minutes"] - rows[0]["quality/train_minutes"]
  assert rows[0]["quality/train_minutes"] > 0 and 0 < gap < 0.5
  assert os.listdir(tmp_path / "cache" / "fid_stats") == [os.path.basename(ref)]
  assert os.listdir(tmp_path / "cache")  # the classifier it trained is cached


def test_sampling_falls_back_to_the_previous_readable_checkpoint(digits_workdir, tmp_path,
                                                                  caplog):
  """A damaged latest checkpoint (its EMA arrays cut in half): sampling uses the one before,
  says so in one warning, and moves nothing; with every checkpoint damaged it stops with a
  UserError."""
  import glob  # pylint: disable=import-outside-toplevel
  import logging  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  work = tmp_path / "run"
  shutil.copytree(digits_workdir, work)

  def damage(step):
    files = [f for f in glob.glob(str(work / "checkpoints" / str(step) / "ema" / "**"),
                                  recursive=True) if os.path.isfile(f) and os.path.getsize(f) > 64]
    assert files
    for f in files:
      with open(f, "r+b") as handle:
        handle.truncate(os.path.getsize(f) // 2)

  damage(40)
  with caplog.at_level(logging.WARNING):
    step = restore.load(str(work)).step
  assert step == 20
  assert "step 40" in caplog.text and "using step 20" in caplog.text
  assert sorted(os.listdir(work / "checkpoints")) == ["20", "40"]  # read-only: nothing moved
  damage(20)
  with pytest.raises(config_lib.UserError, match="no readable checkpoint"):
    restore.load(str(work))


_WITHOUT_TENSORFLOW = """
import sys
class Hide:  # an accelerator image without TensorFlow (and so without clu's writers)
  def __init__(self, inner):
    self.inner = inner
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      return None
    return self.inner.find_spec(name, path, target)
  def __getattr__(self, attr):
    return getattr(self.inner, attr)
sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
sys.argv = ["main"] + sys.argv[1:]
import runpy
runpy.run_module("ebm_jax.main", run_name="__main__")
"""


@pytest.mark.slow  # a training subprocess (about 30 s)
def test_training_runs_without_tensorflow_writing_metrics_jsonl_only(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-c", _WITHOUT_TENSORFLOW, "--config=configs/digits.py:tiny",
       f"--workdir={workdir}", "--config.train.num_steps=20", "--config.train.log_every=10",
       "--config.train.eval_every=0"],
      capture_output=True, text=True, timeout=600, cwd=clirun.ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "no TensorBoard events, metrics.jsonl only" in proc.stderr
  rows = [r for r in read_jsonl(str(workdir / METRICS_FILE)) if "loss" in r]
  assert [r["step"] for r in rows] == [10, 20]
  assert rows[-1]["perf/steps_per_sec"] > 0
  assert not list(workdir.glob("events.out.tfevents*"))
  assert (workdir / "checkpoints" / "20").is_dir()
