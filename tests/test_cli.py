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


def test_a_program_compiles_in_silence_under_the_cpu_flag_set():
  """Set after jax's import, the log level is not read: XLA then prints a harmless 'Unsupported
  fusion type' ERROR line several times per compilation under the flag set. Run as a program,
  an entry point compiles a convolution's gradient in silence (the order of the settings and
  jax's import in every entry point: test_entry_points_on_import below)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = __import__("pathlib").Path(__file__).resolve().parents[1]
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
BENCHMARKS = ("benchmarks.langevin", "benchmarks.sampler", "benchmarks.scaling",
              "benchmarks.precision", "benchmarks.export")

# Imports one entry point (argv[1]) as `python -m` would and reports, as JSON: the XLA settings
# in the environment when jax itself was first imported (an import hook sees it), whether the
# import started jax's backend, which module defined --debug, and whether `main` hands its work
# to cli.run_guarded (replaced by a recorder, so nothing runs).
_PROBE = """
import importlib, json, os, sys
seen = []
class FirstJaxImport:
  def find_spec(self, name, path=None, target=None):
    if name == "jax" and not seen:
      seen.append([os.environ.get("XLA_FLAGS"), os.environ.get("TF_CPP_MIN_LOG_LEVEL")])
sys.meta_path.insert(0, FirstJaxImport())
name = sys.argv[1]
sys.argv = [name]
module = importlib.import_module(name)
from jax._src import xla_bridge as xb
started = xb.backends_are_initialized()
from absl import flags
from ebm_jax import cli
if hasattr(module, "define_flags"):
  module.define_flags()
guarded = []
cli.run_guarded = lambda fn, *args, **kwargs: guarded.append(callable(fn))
module.main([name])
print(json.dumps({"env_at_jax_import": seen[0] if seen else None, "started": started,
                  "debug_from": flags.FLAGS.find_module_defining_flag("debug"),
                  "guarded": guarded}))
"""


def test_entry_points_on_import():
  """Every entry point (and benchmark):
  - sets the CPU XLA flags and the C++ log level before jax is first imported (XLA reads
    the log level when jax loads, so set later it is ignored, and the flags before the
    backend starts);
  - does not start jax's backend at import, so XLA_FLAGS and jax.distributed.initialize
    still take effect (blackjax's import would start it: it is imported where HMC and AIS
    are built); the benchmarks are only held to the first point;
  - takes its --debug from cli.define_common_flags (one definition) and hands its work to
    cli.run_guarded (the persistent compilation cache, one-line user errors).
  Watched while it happens, in one interpreter per module."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "EBM_JAX_XLA_FLAGS")}
  procs = {m: subprocess.Popen([sys.executable, "-c", _PROBE, m], cwd=root, text=True, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for m in ENTRY_POINTS + BENCHMARKS}
  results = {m: p.communicate(timeout=300) + (p.returncode,) for m, p in procs.items()}
  failed = {m: err[-1500:] for m, (_, err, rc) in results.items() if rc != 0}
  assert not failed, failed
  bad = {}
  for m, (out, _, _) in results.items():
    got = json.loads(out.strip().splitlines()[-1])
    want = {"env_at_jax_import": [cli.CPU_XLA_FLAGS, "3"], "debug_from": "ebm_jax.cli",
            "guarded": [True], "started": False if m in ENTRY_POINTS else got["started"]}
    if got != want:
      bad[m] = got
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
