"""The typed settings (ebm_jax/settings.py): built from every config with exactly its fields,
frozen and hashable (so jitted code can close over them), tuples typed, drift refused."""

import dataclasses

import pytest

from ebm_jax import settings as settings_lib
from ebm_jax.configs import default


def test_every_config_field_becomes_a_typed_frozen_field():
  config = default.get_config()
  s = settings_lib.Settings.from_config(config)
  flat = {}
  for section, node in config.items():
    if hasattr(node, "items"):
      for name, value in node.items():
        flat[f"{section}.{name}"] = value
    else:
      flat[section] = node
  for dotted, value in flat.items():
    got = s
    for part in dotted.split("."):
      got = getattr(got, part)
    want = tuple(value) if isinstance(value, (list, tuple)) else value
    if isinstance(want, float) and want != want:  # NaN (debug.inject_value)
      assert isinstance(got, float) and got != got, dotted
      continue
    assert got == want, dotted
    assert type(got) is type(want) or isinstance(want, tuple), dotted
  hash(s)  # a static argument / closure constant of jitted code
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.langevin.step_size = 1.0  # type: ignore[misc]


def test_json_lists_come_back_as_tuples_of_the_annotated_type():
  d = default.get_config().to_dict()
  d["buffer"]["noise_range"] = [0, 1]  # as a config saved to JSON reads back
  d["model"]["mlp_hidden"] = [8, 8]
  s = settings_lib.Settings.from_config(d)
  assert s.buffer.noise_range == (0.0, 1.0) and isinstance(s.buffer.noise_range[0], float)
  assert s.model.mlp_hidden == (8, 8)
  d["buffer"]["noise_range"] = [0, 1, 2]
  with pytest.raises(ValueError, match="noise_range"):
    settings_lib.Settings.from_config(d)


def test_a_field_added_to_one_side_only_is_refused():
  config = default.get_config()
  with config.unlocked():
    config.langevin.new_knob = 3
  with pytest.raises(ValueError, match=r"new_knob"):
    settings_lib.Settings.from_config(config)
  d = default.get_config().to_dict()
  del d["loss"]["ent_eps"]
  with pytest.raises(ValueError, match=r"ent_eps"):
    settings_lib.Settings.from_config(d)


def test_of_passes_settings_through_and_types_a_config():
  s = settings_lib.Settings.from_config(default.get_config())
  assert settings_lib.of(s) is s
  assert repr(settings_lib.of(default.get_config())) == repr(s)  # (NaN != NaN for ==)
