"""Every config, every variant, on 1, 2 and 8 devices: built without compiling anything.

For each config module and each combination of its variant tokens (`tiny`, `cpu`, `elastic`,
the shapes / CelebA attributes, the toy2d densities, true_cd's regimes, ...), `get_config`
must succeed, `config_lib.validate(config, n)` must pass for n = 1, 2, 8 devices, and the
pieces `train.Setup` builds must trace: the dataset's info (`data.get_info`, offline: the
Fashion-MNIST-shaped files of conftest, tensorflow-datasets under `tfds.testing.mock_data`
with downloading off), the net (`models.make_model`) and the abstract training state
(`jax.eval_shape` of `state.create`, with one buffer per device where `buffer.per_device`).
This is how a variant that stops validating, or stops dividing over 8 devices, is caught
without a training run. Where a variant legitimately cannot run on n devices it is listed in
NOT_DIVIDING, and validation must refuse it with a UserError that names the field and the
device count.

The variant tokens are listed here (VARIANT_TOKENS) and checked against what each module says
it accepts (the list in `parse_variant`'s rejection of an unknown token); the config modules
are checked against the files of ebm_jax/configs and of the repository's configs/ wrappers,
so a new config or variant cannot be left out.
"""

import ast
import functools
import importlib
import importlib.util
import itertools
import json
import os
import re

import jax
import ml_collections
import numpy as np
import pytest

import ebm_jax.configs
from ebm_jax import config_lib, models
from ebm_jax import data as data_lib
from ebm_jax import state as state_lib
from ebm_jax.configs import celeba_attributes, shapes, toy2d
from ebm_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.dirname(ebm_jax.configs.__file__)
DEVICES = (1, 2, 8)
HELPERS = {"__init__", "regimes"}  # in ebm_jax/configs but not configs (no get_config)

# module -> (free tokens, one-of tokens): any subset of the free tokens and "tiny", with at
# most one of the one-of tokens (an attribute or a density: one per model).
VARIANT_TOKENS = {
    "default": ((), ()),
    "cifar10": ((), ()),
    "celebahq": ((), ()),
    "lsun_bedroom": ((), ()),
    "digits": ((), ()),
    "igebm_cifar10": ((), ()),
    "jem_cifar10": ((), ()),
    "mnist": (("elastic",), ()),
    "fashion_mnist": (("cpu", "elastic"), ()),
    "igebm_fashion_mnist": (("cpu", "elastic"), ()),
    "jem_fashion_mnist": (("cpu", "elastic"), ()),
    "true_cd": (("shortrun", "right_kl", "paper_kl", "digits", "elastic", "cpu"), ()),
    "shapes": (("cpu",), shapes.ATTRIBUTES),
    "celeba_attributes": ((), celeba_attributes.ATTRIBUTES),
    "toy2d": ((), toy2d.KNOWN),
}
# Combinations get_config refuses (ValueError), by design.
REFUSED = {"true_cd": [{"right_kl", "paper_kl"}, {"digits", "cpu"}]}
# (module, tokens that select it, devices) that legitimately do not divide, and the field named.
NOT_DIVIDING = [
    # 4 KL rows over 8 per-device buffers (lsun's tiny edit; the full config has 256 of 1024)
    ("lsun_bedroom", {"tiny"}, 8, "loss.kl_samples"),
]


def _variants(module: str) -> list[tuple[str, bool]]:
  """(variant string, refused) for every combination of the module's tokens."""
  free, one_of = VARIANT_TOKENS[module]
  free = ("tiny",) + free
  out = []
  for r in range(len(free) + 1):
    for subset in itertools.combinations(free, r):
      for pick in (None,) + tuple(one_of):
        tokens = list(subset) + ([pick] if pick else [])
        refused = any(bad <= set(tokens) for bad in REFUSED.get(module, []))
        out.append((",".join(tokens), refused))
  return out


ALL = [(m, v, refused) for m in VARIANT_TOKENS for v, refused in _variants(m)]


def _get_config(module: str, variant: str):
  return importlib.import_module(f"ebm_jax.configs.{module}").get_config(variant)


def _config_files(folder: str) -> set[str]:
  return {f[:-3] for f in os.listdir(folder) if f.endswith(".py")}


# ------------------------------------------------------------------------- completeness


def test_every_config_module_is_enumerated():
  assert _config_files(PACKAGE_DIR) - HELPERS == set(VARIANT_TOKENS)
  for name in HELPERS - {"__init__"}:
    assert not hasattr(importlib.import_module(f"ebm_jax.configs.{name}"), "get_config"), name
  # the repository's configs/ (what --config points at): one wrapper per package config,
  # loaded by path as the flag loads it, giving the package's get_config
  wrappers = os.path.join(ROOT, "configs")
  assert _config_files(wrappers) == set(VARIANT_TOKENS)
  for name in VARIANT_TOKENS:
    spec = importlib.util.spec_from_file_location(f"_wrapper_{name}",
                                                  os.path.join(wrappers, f"{name}.py"))
    wrapper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapper)
    assert wrapper.get_config is importlib.import_module(
        f"ebm_jax.configs.{name}").get_config, name


@pytest.mark.parametrize("module", sorted(VARIANT_TOKENS))
def test_the_listed_variant_tokens_are_what_the_config_accepts(module):
  # parse_variant's refusal lists the tokens the module accepts: ['tiny', ...]
  with pytest.raises(ValueError, match="unknown config variant") as err:
    _get_config(module, "no_such_variant")
  known = ast.literal_eval(re.search(r"known: (\[.*\])", str(err.value)).group(1))
  free, one_of = VARIANT_TOKENS[module]
  assert sorted(known) == sorted(("tiny",) + free + tuple(one_of))


def test_the_refused_combinations_are_refused():
  refused = [(m, v) for m, v, r in ALL if r]
  assert len(refused) == 56  # true_cd: 32 with both KL forms, 32 with digits and cpu, 8 both
  for module, variant in refused:
    with pytest.raises(ValueError):
      _get_config(module, variant)


# ------------------------------------------------------------------- validate + eval_shape


@pytest.fixture(scope="module")
def mock_tfds():
  """tensorflow-datasets with mock data (nothing read from disk or the network)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4):
    yield


@functools.lru_cache(maxsize=None)
def _info(data_json: str) -> data_lib.DatasetInfo:
  return data_lib.get_info(ml_collections.ConfigDict(json.loads(data_json)))


_STATES = {}
_INITS = {}


class _TracedOnce:
  """The net, for state.create, with its `init` jitted once per (net config, data shape,
  classes): state.create still runs in full (optimizer state, EMA copy, buffers), but the
  net is traced once for the variants and device counts that share it."""

  def __init__(self, init):
    self.init = init


def _build(config, n: int):
  """What train.Setup derives from a config for n devices, without devices or compiling: the
  data info, the net and the abstract state (eval_shape of state.create), cached by the fields
  that enter the state's shapes (many variants share them)."""
  info = _info(json.dumps(config.data.to_dict(), sort_keys=True))
  groups = n if config.buffer.per_device else 0
  model = models.make_model(config.model, info.shape, info.num_classes)
  net_key = json.dumps([config.model.to_dict(), list(info.shape), info.num_classes],
                       sort_keys=True, default=list)
  key = json.dumps([net_key, config.buffer.to_dict(), config.optim.to_dict(),
                    config.train.num_steps, groups], sort_keys=True, default=list)
  if key not in _STATES:
    if net_key not in _INITS:
      _INITS[net_key] = _TracedOnce(jax.jit(model.init))
    tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
    init = functools.partial(state_lib.create, config, _INITS[net_key], info.shape,
                             info.num_classes, tx=tx, buffer_groups=groups)
    _STATES[key] = jax.eval_shape(init, jax.random.key(0))
  return info, _STATES[key]


def _not_dividing(module: str, variant: str, n: int) -> str | None:
  tokens = set(filter(None, variant.split(",")))
  for m, selected, devices, field in NOT_DIVIDING:
    if m == module and selected <= tokens and devices == n:
      return field
  return None


def test_every_config_variant_validates_and_builds_on_1_2_and_8_devices(
    mock_tfds, fashion_mnist_dir, tmp_path):
  refusals = []
  points = str(tmp_path / "points.npz")  # a user's own 2-D points (toy2d.py:points)
  np.savez(points, points=np.random.default_rng(0).uniform(-3, 3, (100, 2)))
  for module, variant, refused in ALL:
    if refused:
      continue
    where = f"{module}:{variant}"
    config = _get_config(module, variant)
    if config.data.name == "fashion_mnist":
      config.data.path = fashion_mnist_dir  # conftest's Fashion-MNIST-shaped IDX files
    if config.data.name == "points":
      config.data.path = points
    config.data.download = False  # tfds: never download (mock_data serves the examples)
    for n in DEVICES:
      field = _not_dividing(module, variant, n)
      if field:
        with pytest.raises(UserError, match=rf"config\.{re.escape(field)}=.*\({n}\)"):
          config_lib.validate(config, n)
        refusals.append((where, n))
        continue
      try:
        config_lib.validate(config, n)
      except UserError as e:
        raise AssertionError(f"{where} on {n} device(s): {e}") from e
      try:
        info, state = _build(config, n)
      except (ValueError, UserError) as e:  # make_model, buffer.init, get_info (DataError)
        raise AssertionError(f"{where} on {n} device(s) does not build: {e}") from e
      assert info.shape == ((2,) if config.data.name in ("toy2d", "points") else
                            (config.data.image_size,) * 2 + (config.data.channels,)), where
      assert (info.num_classes > 0) == bool(config.data.attribute), where
      buf = state.buffer.data.shape
      per_device = (n,) if config.buffer.per_device else ()
      assert buf == per_device + (config.buffer.capacity,) + info.shape, (where, n, buf)
      assert config.train.batch_size % n == 0
      leaves = jax.tree.leaves(state.params)
      assert leaves and jax.tree.structure(state.params) == jax.tree.structure(
          state.ema_params), where
  for m, selected, devices, field in NOT_DIVIDING:  # each listed exception still exists
    assert any(w.startswith(f"{m}:") and n == devices for w, n in refusals), (m, selected)


def test_two_one_of_tokens_are_refused_not_dropped():
  # toy2d once trained the first density of "rings,checkerboard" and dropped the second
  with pytest.raises(ValueError, match="rings, checkerboard"):
    _get_config("toy2d", "rings,checkerboard")
