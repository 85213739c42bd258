"""The notebooks run end to end (nbclient) against a workdir written by a tiny training run."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_quickstart_notebook_runs_and_draws_its_figures(digits_workdir, tmp_path, monkeypatch):
  printed = _run("quickstart.ipynb", digits_workdir, tmp_path, monkeypatch)
  for name in ("training_curves", "samples"):
    assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
  assert "checkpoint step 40" in printed  # the shared run's latest (tests/conftest.py)


def test_gradient_magnitudes_notebook_runs_and_draws_its_figures(digits_workdir, tmp_path,
                                                                 monkeypatch):
  printed = _run("gradient_magnitudes.ipynb", digits_workdir, tmp_path, monkeypatch)
  for name in ("gradient_magnitudes", "energy_gap", "decomposition", "samples"):
    assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
  assert "|grad L_KL| = " in printed and "no decomposition logged" not in printed
