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
               "benchmarks/train_step.py", "benchmarks/langevin.py", "benchmarks/scaling.py"]:
    text = (root / path).read_text()
    assert "cli.run_guarded(" in text, path
    assert 'DEFINE_bool("debug"' not in text, path  # one --debug, from cli.define_common_flags


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
