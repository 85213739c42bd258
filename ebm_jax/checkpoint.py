"""Checkpoints with orbax's CheckpointManager, as three items per step:

  state  - the whole TrainState (params, EMA, optimizer, replay buffer, model state)
  ema    - {"params": EMA params, "model_state": ...}: all that sampling needs
  config - {"config": the config, "data_info": shape, classes, levels of the data} as JSON

so a sampler restores `ema` and `config` from a read-only manager without touching the
(large) state. Saves are asynchronous; the latest `keep_checkpoints` are kept plus one every
`keep_every` steps.
"""

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from ebm_jax import config_lib

# Fields whose change makes a checkpoint unusable (array shapes or dtypes depend on them).
SHAPE_FIELDS = ("data.name", "data.image_size", "data.channels", "data.attribute",
                "data.toy_density", "model.", "buffer.capacity", "buffer.storage",
                "optim.grad_clip_norm")


def checkpoint_dir(workdir: str) -> str:
  path = os.path.join(workdir, "checkpoints")
  return path if "://" in path else os.path.abspath(path)  # orbax needs absolute paths


def config_differences(saved: dict, current: dict) -> list[str]:
  """Human-readable "field: checkpoint vs now" lines for fields that differ."""
  a, b = config_lib.flatten(saved), config_lib.flatten(current)
  return [f"{k}: {a.get(k, '<absent>')!r} in the checkpoint, {b.get(k, '<absent>')!r} now"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Checkpointer:

  def __init__(self, workdir: str, config: ml_collections.ConfigDict | None = None,
               data_info=None, *, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    self.config = config
    self.data_info = data_info
    train = config.train if config is not None else None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=train.keep_checkpoints if train else None,
        keep_period=(train.keep_every or None) if train else None,
        create=not read_only, read_only=read_only, enable_async_checkpointing=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "ema", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        ema=ocp.args.StandardSave({"params": state.ema_params,
                                   "model_state": state.model_state}),
        config=ocp.args.JsonSave({"config": self.config.to_dict(),
                                  "data_info": dataclasses.asdict(self.data_info)})))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def restore_config(self, step: int | None = None) -> dict:
    """{"config": ..., "data_info": ...} as saved with the checkpoint."""
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def restore_state(self, abstract_state, shardings) -> Any | None:
    """The latest TrainState with the given shardings, or None if there is no checkpoint.
    A checkpoint written with an incompatible config raises UserError naming the fields."""
    step = self.latest_step()
    if step is None:
      return None
    saved = self.restore_config(step)["config"]
    diffs = config_differences(saved, self.config.to_dict())
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target))).state
    except (ValueError, KeyError, TypeError) as e:
      shape_diffs = [d for d in diffs if d.startswith(SHAPE_FIELDS)] or diffs
      raise config_lib.UserError(
          f"the checkpoint at step {step} in {self.directory} does not fit the current "
          "config; fields that differ:\n  " + "\n  ".join(shape_diffs or ["(none found)"])
          + f"\nUse a new --workdir, or the checkpoint's config.\n(orbax: {str(e)[:300]})"
      ) from e
    if diffs:
      logging.warning("Resuming step %d with config changes:\n  %s", step, "\n  ".join(diffs))
    return restored

  def restore_ema(self, abstract_ema, step: int | None = None):
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(
        ema=ocp.args.StandardRestore(abstract_ema))).ema
