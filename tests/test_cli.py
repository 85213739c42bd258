"""What every entry point shares (ebm_jax/cli.py): the persistent compilation cache, one-line
errors, the shared flags."""

import jax
import pytest

from ebm_jax import cli, errors


@pytest.fixture
def restore_cache_dir():
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", before)


def test_entry_points_turn_on_the_persistent_compilation_cache(tmp_path, monkeypatch,
                                                                restore_cache_dir):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv("EBM_JAX_COMPILATION_CACHE", raising=False)
  monkeypatch.setenv("EBM_JAX_CACHE", str(tmp_path))
  assert cli.enable_compilation_cache() == str(tmp_path / "xla")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  # JAX's own variable wins; EBM_JAX_COMPILATION_CACHE=0 turns it off
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  assert cli.enable_compilation_cache() == str(tmp_path / "mine")
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv("EBM_JAX_COMPILATION_CACHE", "0")
  assert cli.enable_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir is None


def test_every_entry_point_goes_through_run_guarded():
  """main, sample, evaluate, compose, the ablation runner and the benchmarks all call
  cli.run_guarded (which turns the cache on), and define their flags through cli."""
  import pathlib  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(__file__).resolve().parents[1]
  for path in ["ebm_jax/main.py", "ebm_jax/sample.py", "ebm_jax/evaluate.py",
               "ebm_jax/compose.py", "ebm_jax/experiments/ablation.py",
               "ebm_jax/experiments/toy2d.py",
               "benchmarks/train_step.py", "benchmarks/langevin.py", "benchmarks/scaling.py"]:
    text = (root / path).read_text()
    assert "cli.run_guarded(" in text, path
    assert 'DEFINE_bool("debug"' not in text, path  # one --debug, from cli.define_common_flags


def test_the_cpu_xla_flags_are_set_only_when_xla_flags_is_unset(monkeypatch):
  monkeypatch.delenv("EBM_JAX_XLA_FLAGS", raising=False)
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert cli.apply_xla_flags() is None  # the user's flags stand, alone
  assert cli.os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("EBM_JAX_XLA_FLAGS", "0")  # the off switch
  assert cli.apply_xla_flags() is None and "XLA_FLAGS" not in cli.os.environ
  monkeypatch.delenv("EBM_JAX_XLA_FLAGS")
  monkeypatch.setattr(cli, "_ACCELERATOR_PLUGINS", ("json",))  # as if a GPU plugin were there
  assert cli.apply_xla_flags() is None and "XLA_FLAGS" not in cli.os.environ
  monkeypatch.setattr(cli, "_ACCELERATOR_PLUGINS", ("no_such_plugin_here",))
  assert cli.apply_xla_flags() == cli.CPU_XLA_FLAGS == cli.os.environ["XLA_FLAGS"]
  assert cli.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # its harmless ERROR lines silenced


def test_entry_points_set_the_flags_before_anything_imports_jax():
  """Set after jax's import, the log level is not read: XLA then prints a harmless 'Unsupported
  fusion type' ERROR line several times per compilation under the flag set (62 in a digits
  run). Each entry point calls cli.apply_xla_flags() before its other project and library
  imports; run as a program, one of them compiles a convolution's gradient in silence."""
  import pathlib  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(__file__).resolve().parents[1]
  for module in ENTRY_POINTS + ("benchmarks.langevin", "benchmarks.sampler", "benchmarks.scaling",
                                "benchmarks.precision",
                                "benchmarks.export"):
    text = (root / (module.replace(".", "/") + ".py")).read_text()
    imports = [m.start() for m in re.finditer(r"^(import|from) (?!ebm_jax import cli\b)"
                                                r"(?!(os|json|time|copy|re)\b)", text, re.M)]
    assert text.index("cli.apply_xla_flags()") < min(imports), module
  code = ("import runpy, sys\nsys.argv = ['x']\nimport ebm_jax.main\nimport jax, jax.numpy as jnp\n"
          "w = jnp.ones((3, 3, 3, 4))\nconv = lambda x: jax.lax.conv_general_dilated("
          "x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
          "print(jax.jit(jax.grad(lambda x: (conv(x) ** 2).sum()))(jnp.ones((2, 8, 8, 3))).shape)\n"
          "import os; print(os.environ['XLA_FLAGS'])")
  env = {k: v for k, v in __import__("os").environ.items()
         if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "EBM_JAX_XLA_FLAGS")}
  done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, text=True,
                        capture_output=True, timeout=300, check=True)
  assert cli.CPU_XLA_FLAGS in done.stdout  # the set was on (no accelerator plugin here)
  assert "Unsupported fusion type" not in done.stderr, done.stderr[-2000:]


ENTRY_POINTS = ("ebm_jax.main", "ebm_jax.sample", "ebm_jax.evaluate", "ebm_jax.compose",
                "ebm_jax.experiments.ablation", "ebm_jax.experiments.toy2d", "benchmarks.train_step")


def test_importing_an_entry_point_does_not_start_jaxs_backend():
  """XLA_FLAGS (above) and jax.distributed.initialize only take effect before the backend
  starts, so no entry point may start it at import (blackjax's import does: it is imported
  where HMC and AIS are built)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  code = ("import importlib, sys\nfrom jax._src import xla_bridge as xb\n"
          "importlib.import_module(sys.argv[1])\n"
          "print('started' if xb.backends_are_initialized() else 'ok')")
  root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
  procs = {m: subprocess.Popen([sys.executable, "-c", code, m], cwd=root, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for m in ENTRY_POINTS}  # one interpreter each: some define flags at import
  results = {m: p.communicate(timeout=300) + (p.returncode,) for m, p in procs.items()}
  bad = {m: (out.strip(), err[-500:]) for m, (out, err, rc) in results.items()
         if rc != 0 or out.strip() != "ok"}
  assert not bad, bad


def test_stray_arguments_are_a_user_error():
  with pytest.raises(errors.UserError, match="unexpected argument"):
    cli.no_positional(["prog", "oops"])
  cli.no_positional(["prog"])


def test_unwritable_outputs_are_user_errors(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(errors.UserError, match="cannot create"):
    cli.make_dirs(str(blocker / "sub"), "--out")
  with pytest.raises(errors.UserError, match="--out="):
    cli.write_text(str(blocker / "a.json"), "{}")
  cli.write_text(str(tmp_path / "ok" / "a.json"), "{}")
  assert (tmp_path / "ok" / "a.json").read_text() == "{}"
