"""A user's own 2-D points (data.name=points, data.path=FILE.npz): the split, the stream, the
checks on the file, and a tiny run trained and judged end to end as the 2-D densities are."""

import numpy as np
import pytest

from conftest import train_tiny_2d
from ebm_jax import config_lib, data
from ebm_jax.configs import toy2d as toy2d_config
from ebm_jax.eval import likelihood


def _write(path, x, **extra):
  np.savez(path, points=x, **extra)
  return str(path)


def _points(n=400, seed=0):
  return data.sample_toy2d("8gaussians", n, np.random.default_rng(seed))


def test_points_split_stream_and_resume(tmp_path):
  path = _write(tmp_path / "p.npz", _points())
  cfg = toy2d_config.get_config("points").data
  cfg.path = path
  train_rows, test_rows = data.toy2d.points_split(path, "train"), data.toy2d.points_split(path, "test")
  assert len(test_rows) == 40 and len(train_rows) == 360
  rows = {tuple(r) for r in train_rows}
  assert not rows & {tuple(r) for r in test_rows}  # disjoint, together every point
  assert len(rows | {tuple(r) for r in test_rows}) == 400
  info = data.get_info(data.as_settings(cfg))
  assert info.shape == (2,) and info.num_examples == 360 and info.num_classes == 0
  stream = data.make_stream(data.as_settings(cfg), batch_size=32, seed=3)
  batches = [next(stream)["image"] for _ in range(4)]
  assert all(tuple(r) in rows for b in batches for r in b)  # training sees train rows only
  resumed = next(data.make_stream(data.as_settings(cfg), batch_size=32, seed=3, start_step=3))
  np.testing.assert_array_equal(resumed["image"], batches[3])


@pytest.mark.parametrize("content,expected", [
    ("shape", "(N, 2)"), ("few", "at least 20"), ("nan", "not finite"), ("two", "name it")])
def test_bad_points_files_are_refused_with_one_clear_line(tmp_path, content, expected):
  x = _points()
  if content == "shape":
    path = _write(tmp_path / "p.npz", x[:, :1])
  elif content == "few":
    path = _write(tmp_path / "p.npz", x[:10])
  elif content == "nan":
    x[5, 1] = np.nan
    path = _write(tmp_path / "p.npz", x)
  else:
    path = str(tmp_path / "p.npz")
    np.savez(path, a=x, b=x)
  with pytest.raises(data.DataError, match=expected):
    data.toy2d.load_points(path)


def test_points_outside_the_square_name_the_square_that_holds_them(tmp_path):
  c = toy2d_config.get_config("points")
  c.data.path = _write(tmp_path / "p.npz", _points() * 3)  # out to about ±6.3
  with pytest.raises(config_lib.UserError, match=r"noise_range='\(-7"):
    config_lib.validate(c)


def test_a_tiny_run_on_points_trains_and_is_scored_on_the_held_out_rows(tmp_path):
  path = _write(tmp_path / "p.npz", _points(1000))
  run = train_tiny_2d("points", 30, str(tmp_path / "run"), path=path)
  out = likelihood.evaluate(run, num=2000, chains=32, temperatures=100, sampler="hmc",
                            step_size=0.1, leapfrog_steps=3)
  assert out["num"] == 100 and out["nll_true"] is None and out["box"] == (-4.0, 4.0)
  assert np.isfinite(out["nll_grid"]) and abs(out["ais_minus_grid"]) < 0.2, out
  # the score is of the held-out rows: recomputed from the energy and the grid's log Z
  energy = run.energy_fn()
  test_rows = data.toy2d.points_split(path, "test")
  again = likelihood.nll(energy, test_rows, out["grid"]["log_z"])
  assert again == pytest.approx(out["nll_grid"], abs=1e-9)
