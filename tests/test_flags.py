"""Command-line flags take effect: `sample` and `compose` draw exactly what the in-process
sampler draws with the settings each flag names, and a changed flag changes the draw (a flag
that is parsed but silently dropped fails here); `compose --score`'s success rates on a
hand-made case; the distributed peer watch against a fake key-value store."""

import dataclasses
import os
import shutil
import threading
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from ebm_jax import composition, distributed, restore, sampling
from ebm_jax import settings as settings_lib

import clirun

# Samples in [0, 1]; two draws that differ in any setting differ by far more than this.
SAME, DIFFERENT = 1e-6, 1e-3


def _npz(folder) -> np.ndarray:
  (path,) = [os.path.join(folder, p) for p in os.listdir(folder) if p.endswith(".npz")]
  with np.load(path) as f:
    return f["samples"]


def _max_diff(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _rel_diff(a, b) -> float:
  return _max_diff(a, b) / float(np.abs(np.asarray(b, np.float64)).max())


# ------------------------------------------------------------------------------------ sample


def test_sample_flags_draw_what_the_in_process_sampler_draws(digits_workdir, tmp_path):
  """`sample` twice: with the defaults, and with every chain flag changed at once (--steps,
  --block_steps, --final_steps, --step_size, --seed, --step, --num, --augment). Each time the
  in-process Sampler, given the settings the flags document (written out here, not read back
  through the flags' code path), must reproduce the CLI's samples: a flag that is parsed and
  then not passed on (--step_size into config.sample, --seed into the key, --step into the
  restore, ...) makes the second comparison fail. Tiny digits chain by default: one block of
  2 steps + an augmentation transition, then 2 plain steps, λ = langevin.step_size."""
  w = f"--workdir={digits_workdir}"
  changed = ["--steps=3", "--block_steps=1", "--final_steps=1", "--step_size=2.0", "--seed=2",
             "--step=20", "--num=6", "--augment=false"]
  base, flagged = clirun.run_cli("ebm_jax.sample", [
      [w, "--num=4", "--seed=1", f"--out={tmp_path / 'base'}"],
      [w, *changed, f"--out={tmp_path / 'flagged'}"]])
  for r in (base, flagged):
    assert r["code"] == 0, r["stderr"][-2000:]
  got_base, got = _npz(tmp_path / "base"), _npz(tmp_path / "flagged")

  run, run20 = restore.load(digits_workdir), restore.load(digits_workdir, 20)
  config, info, model = run.config, run.info, run.model
  v40, v20 = run.variables, run20.variables
  assert run.step == 40 and run20.step == 20 and float(config.langevin.step_size) != 2.0
  lc, shape = config.langevin, tuple(info.shape)
  default = sampling.TestChain(
      chain=settings_lib.ChainSettings(step_size=float(lc.step_size),
                                       noise_scale=float(lc.noise_scale),
                                       grad_clip=float(lc.grad_clip), clip_x=True, sampler="ula"),
      num_blocks=1, block_steps=2, final_steps=2, noise_range=tuple(config.buffer.noise_range))
  transition = sampling.transition_from_config(config, shape, True)
  assert transition is not None  # the default chain augments between blocks
  energy = sampling.model_energy(model)
  want_base = sampling.Sampler(energy, default, shape, transition, 4).draw(
      jax.random.key(1), 4, None, v40)[0]
  assert got_base.shape == (4,) + shape and _max_diff(got_base, want_base) < SAME

  # 3 steps in blocks of 1 with 1 plain step at the end: 2 blocks + 1; λ = 2; no transition
  flagged_chain = sampling.Sampler(
      energy, default._replace(num_blocks=2, block_steps=1, final_steps=1,
                               chain=dataclasses.replace(default.chain, step_size=2.0)),
      shape, None, 4)
  want = flagged_chain.draw(jax.random.key(2), 6, None, v20)[0]
  assert got.shape == (6,) + shape, got.shape
  assert _max_diff(got, want) < SAME, _max_diff(got, want)
  # the same chain with the default seed or the latest checkpoint draws something else
  for seed, variables in ((1, v20), (2, v40)):
    other = flagged_chain.draw(jax.random.key(seed), 6, None, variables)[0]
    assert _max_diff(other, got) > DIFFERENT, seed


# ----------------------------------------------------------------------------------- compose


def _older_copy(workdir: str, dest: str) -> str:
  """A copy of a run holding only its step-20 checkpoint (a second, different model; the
  shared run is never written to)."""
  shutil.copytree(workdir, dest, ignore=lambda folder, names: [
      n for n in names if os.path.basename(folder) == "checkpoints" and n == "40"])
  return dest


@pytest.mark.slow  # two compose processes and their chains (~1 min)
def test_compose_flags_draw_what_the_composed_energy_draws(digits_workdir, tmp_path):
  """`compose` twice, `or` at --temperature=0.5 and `not` at --alpha=0.5 with --steps, --seed
  and --num changed too (both --augment=false: no transition is compiled, and one is due after
  the first block of the second). Each must draw what the test-time chain of the composed
  energy, with λ divided by the number of models, draws with those settings. Two models that
  differ (the run at steps 40 and 20), so that T and α shape the gradient (checked: with two
  copies of one model they would not)."""
  older = _older_copy(digits_workdir, str(tmp_path / "older"))
  models = [f"--model={digits_workdir}", f"--model={older}"]
  runs = clirun.run_cli("ebm_jax.compose", [
      models + ["--op=or", "--temperature=0.5", "--num=4", "--steps=2", "--augment=false",
                f"--out={tmp_path / 'or'}"],
      models + ["--op=not", "--alpha=0.5", "--num=3", "--steps=4", "--seed=1",
                "--augment=false", f"--out={tmp_path / 'not'}"]])
  for r in runs:
    assert r["code"] == 0, r["stderr"][-2000:]
  got_or, got_not = _npz(tmp_path / "or"), _npz(tmp_path / "not")

  components = [composition.load_component(digits_workdir), composition.load_component(older)]
  variables = [c.run.variables for c in components]
  config, shape = components[0].run.config, tuple(components[0].run.info.shape)
  lc = config.langevin
  chain = sampling.TestChain(  # λ halved for two models
      chain=settings_lib.ChainSettings(step_size=float(lc.step_size) / 2,
                                       noise_scale=float(lc.noise_scale),
                                       grad_clip=float(lc.grad_clip)),
      num_blocks=0, block_steps=2, final_steps=2, noise_range=tuple(config.buffer.noise_range))

  def energy_of(op, **kwargs):
    def energy(vs, x, y):
      del y
      es = [c.energy_with(v, x) for c, v in zip(components, vs)]
      return composition.combine(es, op, **kwargs)[:, None]
    return energy

  def draw(energy, settings, seed, num):
    return sampling.draw(energy, settings, jax.random.key(seed), num, shape,
                         variables=variables, batch_size=4)[0]

  # --steps=2, no more than the 2 plain steps at the end: no block
  want = draw(energy_of("or", temperature=0.5), chain, 0, 4)
  assert got_or.shape == want.shape and _max_diff(got_or, want) < SAME, _max_diff(got_or, want)
  # --steps=4: one block of 2 (a transition would follow it) + 2 plain steps
  want = draw(energy_of("not", alpha=0.5), chain._replace(num_blocks=1), 1, 3)
  assert got_not.shape == want.shape and _max_diff(got_not, want) < SAME, _max_diff(got_not, want)

  # T and α matter for these two models: the composed gradient at the chain starts moves by
  # far more than rounding (it would not for two copies of one model)
  x = jax.random.uniform(jax.random.key(0), (4,) + shape)
  grad = lambda e, vs=variables: jax.grad(lambda z: e(vs, z, None).sum())(x)
  assert _rel_diff(grad(energy_of("or", temperature=0.5)),
                   grad(energy_of("or", temperature=1.0))) > 1e-3
  assert _rel_diff(grad(energy_of("not", alpha=0.5)), grad(energy_of("not", alpha=1.0))) > 1e-3
  twice = [variables[0], variables[0]]
  assert _rel_diff(grad(energy_of("or", temperature=0.5), twice),
                   grad(energy_of("or", temperature=1.0), twice)) < 1e-5


# ------------------------------------------------------------------------- compose --score


class _FakeClassifier:
  """Predicts an attribute from the first pixel (an integer code), as a trained one would."""

  def __init__(self, fn, num_classes):
    self.fn, self.meta = fn, {"num_classes": num_classes}

  def predict(self, x):
    return self.fn(np.asarray(x).reshape(len(x), -1)[:, 0].astype(int))


# codes 0..11: shape = code % 3, colour = code // 3 % 4 (every pair of values once)
_CLASSIFIERS = {"shape": _FakeClassifier(lambda c: c % 3, 3),
                "color": _FakeClassifier(lambda c: c // 3 % 4, 4)}


def _codes(*codes):
  return np.asarray(codes, np.float32).reshape(-1, 1, 1, 1)


def test_attribute_success_counts_a_hand_made_case():
  """Per-attribute and all-attribute success rates, and chance, counted by hand: a miscount
  (or an `all` that is really `any`) would misreport every --score table."""
  x = _codes(0, 3, 4, 6, 9, 1, 2, 10)  # shapes 0 0 1 0 0 1 2 1; colours 0 1 1 2 3 0 0 3
  got = composition.attribute_success(x, {"shape": 0, "color": 1}, _CLASSIFIERS)
  assert got == {"all": 1 / 8, "shape": 4 / 8, "color": 2 / 8, "chance": 1 / 12}
  got = composition.attribute_success(x, {"shape": 1}, _CLASSIFIERS)
  assert got == {"all": 3 / 8, "shape": 3 / 8, "chance": 1 / 3}


def test_score_table_of_a_composition_and_each_model_alone(monkeypatch):
  """composition.score (`compose --score`): each component's attribute requested at its
  label, the composition's samples scored as given, and each model alone scored on its own
  samples (faked here: one code each), with the success rates known exactly."""
  from ebm_jax.eval import features  # pylint: disable=import-outside-toplevel

  def component(attribute, label, names):
    settings = SimpleNamespace(data=SimpleNamespace(name="shapes", attribute=attribute))
    info = SimpleNamespace(class_names=names, num_classes=len(names))
    run = restore.Run(config=None, settings=settings, info=info, model=None, variables={},
                      step=0)
    return composition.Component(run, label, f"runs/{attribute}")

  shape = component("shape", 2, ("circle", "square", "triangle"))
  color = component("color", 1, ("red", "green", "blue", "white"))
  loaded = []
  monkeypatch.setattr(features, "load_classifier",
                      lambda data, attribute, cache: loaded.append(attribute)
                      or _CLASSIFIERS[attribute])
  alone = {"shape": _codes(2, 2, 5, 0), "color": _codes(3, 4, 4, 4)}
  monkeypatch.setattr(composition, "sample",
                      lambda comps, op, key, num, **kw: alone[comps[0].run.settings.data.attribute][:num])
  x = _codes(5, 5, 8, 2)  # (shape, colour): (2, 1) (2, 1) (2, 2) (2, 0)
  table = composition.score([shape, color], x, jax.random.key(0), "unused")
  assert sorted(loaded) == ["color", "shape"]
  chance = 1 / 12
  assert table == {
      "composition": {"all": 2 / 4, "shape": 4 / 4, "color": 2 / 4, "chance": chance},
      # (2,0) (2,0) (2,1) (0,0); (0,1) (1,1) (1,1) (1,1)
      "shape=triangle alone": {"all": 1 / 4, "shape": 3 / 4, "color": 1 / 4, "chance": chance},
      "color=green alone": {"all": 0.0, "shape": 0.0, "color": 4 / 4, "chance": chance},
  }


# -------------------------------------------------------------------------------- peer watch


class _FakeStore:
  """The coordination service's key-value store as the watch uses it. Peers listed in
  `beating` bump their counters at every read; `silent_after[p]` stops peer p after that many
  reads; `done` peers have written "done"; `fail` makes every call raise (coordinator gone)."""

  def __init__(self, beating=(), silent_after=None, done=(), fail=False):
    self.values, self.reads, self.fail = {}, 0, fail
    self.beating, self.silent_after = set(beating), dict(silent_after or {})
    self.last_bump = {}
    for p in done:
      self.values[f"{distributed._PREFIX}{p}"] = distributed._DONE  # pylint: disable=protected-access
    self.lock = threading.Lock()

  def key_value_set(self, key, value, allow_overwrite=False):
    assert allow_overwrite
    if self.fail:
      raise RuntimeError("UNAVAILABLE: failed to connect to the coordinator")
    with self.lock:
      self.values[key] = value

  def key_value_dir_get(self, prefix):
    with self.lock:
      self.reads += 1
      for p in self.beating:
        if self.reads <= self.silent_after.get(p, float("inf")):
          self.values[f"{prefix}{p}"] = str(self.reads)
          self.last_bump[p] = time.monotonic()
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class _Exited(Exception):
  pass


@pytest.fixture
def watch_of_three(monkeypatch):
  """A PeerWatch of process 0 of 3 on a fake store; os._exit recorded (and the watch thread
  ended) instead of ending pytest."""
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 3)
  monkeypatch.setattr(distributed.jax, "process_index", lambda: 0)
  exits = []

  def fake_exit(code):
    exits.append((code, time.monotonic()))
    raise _Exited(code)  # ends the watch thread, as os._exit would end the process

  monkeypatch.setattr(distributed.os, "_exit", fake_exit)
  previous = threading.excepthook
  monkeypatch.setattr(threading, "excepthook", lambda args: None if issubclass(
      args.exc_type, _Exited) else previous(args))

  def make(store, stale_s=0.4):
    watch = distributed.PeerWatch(stale_s, every_s=0.02, client=store)
    watch.start()
    return watch
  return make, exits


def test_peer_watch_keeps_quiet_for_healthy_and_finished_peers(watch_of_three, capsys):
  """Peers that keep beating, or that said they finished, are not a loss: the watch runs many
  times its staleness window without acting, bumps its own counter, and on stop tells the
  others it finished."""
  make, exits = watch_of_three
  store = _FakeStore(beating=[1], done=[2])
  watch = make(store, stale_s=0.2)
  time.sleep(1.2)
  assert watch.is_alive() and not exits, capsys.readouterr().err
  watch.stop()
  assert not exits and store.reads > 10
  assert store.values[f"{distributed._PREFIX}0"] == distributed._DONE  # pylint: disable=protected-access
  assert "error" not in capsys.readouterr().err


def test_peer_watch_stops_the_process_when_a_peer_falls_silent(watch_of_three, capsys):
  """A peer whose counter stops moving ends this process with EXIT_PEER_LOST and one line
  naming it, but only after the staleness window has passed (not at the first quiet read)."""
  make, exits = watch_of_three
  store = _FakeStore(beating=[1, 2], silent_after={2: 5})
  watch = make(store, stale_s=0.4)
  watch.join(timeout=30)
  assert not watch.is_alive() and [code for code, _ in exits] == [distributed.EXIT_PEER_LOST]
  assert exits[0][1] - store.last_bump[2] > 0.4  # waited out the window after the last beat
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "process 2 of 3" in lines[0] and "rerun" in lines[0], err


def test_peer_watch_stops_the_process_when_a_peer_never_starts(watch_of_three, capsys):
  make, exits = watch_of_three
  store = _FakeStore(beating=[1])  # process 2 never writes a counter
  watch = make(store, stale_s=0.3)
  watch.join(timeout=30)
  assert [code for code, _ in exits] == [distributed.EXIT_PEER_LOST]
  assert "process 2 of 3" in capsys.readouterr().err


def test_peer_watch_stops_the_process_when_the_coordinator_is_gone(watch_of_three, capsys):
  make, exits = watch_of_three
  watch = make(_FakeStore(beating=[1, 2], fail=True))
  watch.join(timeout=30)
  assert [code for code, _ in exits] == [distributed.EXIT_PEER_LOST]
  assert "lost contact with the coordinator" in capsys.readouterr().err
