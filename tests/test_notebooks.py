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
  train.train_and_evaluate(digits.get_config("tiny"), path)
  return path


def test_quickstart_notebook_runs_and_draws_its_figures(workdir, tmp_path, monkeypatch):
  figures = tmp_path / "figures"
  monkeypatch.setenv("EBM_WORKDIR", workdir)
  monkeypatch.setenv("EBM_FIGURES", str(figures))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, kernel_name="python3", timeout=600,
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  for name in ("training_curves", "samples"):
    assert (figures / f"{name}.png").stat().st_size > 5000, name
  printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert f"checkpoint step {digits.get_config('tiny').train.num_steps}" in printed
