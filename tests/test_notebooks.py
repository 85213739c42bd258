"""The notebooks run end to end (nbclient) against a workdir written by a tiny training run."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from configs import digits
from ebm_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("digits"))
  config = digits.get_config("tiny")
  config.train.log_grad_terms_every = 1  # for the gradient-magnitudes notebook
  train.train_and_evaluate(config, path)
  return path


def _run(notebook, workdir, figures, monkeypatch) -> str:
  """Executes a notebook against workdir; returns everything its cells printed."""
  monkeypatch.setenv("EBM_WORKDIR", workdir)
  monkeypatch.setenv("EBM_FIGURES", str(figures))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", notebook), as_version=4)
  NotebookClient(nb, kernel_name="python3", timeout=600,
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))


def test_quickstart_notebook_runs_and_draws_its_figures(workdir, tmp_path, monkeypatch):
  printed = _run("quickstart.ipynb", workdir, tmp_path, monkeypatch)
  for name in ("training_curves", "samples"):
    assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
  assert f"checkpoint step {digits.get_config('tiny').train.num_steps}" in printed


def test_gradient_magnitudes_notebook_runs_and_draws_its_figures(workdir, tmp_path,
                                                                 monkeypatch):
  printed = _run("gradient_magnitudes.ipynb", workdir, tmp_path, monkeypatch)
  for name in ("gradient_magnitudes", "energy_gap", "decomposition", "samples"):
    assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
  assert "|grad L_KL| = " in printed and "no decomposition logged" not in printed
