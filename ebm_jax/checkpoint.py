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
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from ebm_jax import config_lib, faults

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


def _leaf_table(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{"a/b/c": (shape, dtype)} over a tree of arrays, array metadata or ShapeDtypeStructs;
  dict keys and dataclass/NamedTuple fields read alike, so saved and live trees compare."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  return {"/".join(name(e) for e in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def array_differences(saved, current) -> list[str]:
  """Lines naming every array whose presence, shape or dtype differs between two trees."""
  a, b = _leaf_table(saved), _leaf_table(current)
  out = []
  for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k):
      fmt = lambda v: "absent" if v is None else f"{v[1]}{list(v[0])}"
      out.append(f"{k}: {fmt(a.get(k))} in the checkpoint, {fmt(b.get(k))} now")
  return out


class Checkpointer:

  def __init__(self, workdir: str, config: ml_collections.ConfigDict | None = None,
               data_info=None, *, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    self.config = config
    self.data_info = data_info
    train = config.train if config is not None else None
    self._before_commit = None  # a fault for the next commit (ebm_jax.faults.save_fault)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=train.keep_checkpoints if train else None,
        keep_period=(train.keep_every or None) if train else None,
        save_interval_steps=0 if read_only else 1, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only,
        # Run by orbax's writer thread once a save's items are written, before its commit.
        async_options=None if read_only else ocp.AsyncOptions(
            post_finalization_callback=self._written))
    # Handlers named up front, so item metadata (shapes, dtypes) can be read before a restore.
    # A read-only manager makes orbax warn that the directory is read-only, which is what was
    # asked for: the warning is held back for that one call.
    level = logging.get_verbosity()
    if read_only:
      logging.set_verbosity(logging.ERROR)
    try:
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "ema": ocp.StandardCheckpointHandler(),
                         "config": ocp.JsonCheckpointHandler()})
    finally:
      logging.set_verbosity(level)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    """Starts an asynchronous save of `state` (and its EMA item and config) as `step`."""
    if step in self.manager.all_steps():
      return
    fault = faults.save_fault(self.config, step)
    if fault is not None:  # armed once earlier writes are done: this save's write meets it
      self.manager.wait_until_finished()
      self._before_commit = fault
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        ema=ocp.args.StandardSave({"params": state.ema_params,
                                   "model_state": state.model_state}),
        config=ocp.args.JsonSave({"config": self.config.to_dict(),
                                  "data_info": dataclasses.asdict(self.data_info)})))

  def _written(self) -> None:
    """The seam between a save's write and its commit (orbax's post-finalization callback):
    runs the armed fault, once."""
    fault, self._before_commit = self._before_commit, None
    if fault is not None:
      fault()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def restore_config(self, step: int | None = None) -> dict:
    """{"config": ..., "data_info": ...} as saved with the checkpoint."""
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def restore_state(self, abstract_state, shardings, *, quiet: bool = False) -> Any | None:
    """The latest readable TrainState with the given shardings; None if there is no checkpoint.

    A checkpoint that cannot be read (cut off mid-write, truncated or damaged on disk) is
    reported and skipped in favour of the one before it, and moved to WORKDIR/corrupt_checkpoints
    so that training can write that step again. When no checkpoint can be read at all, nothing
    is moved and UserError is raised: a workdir with checkpoints never silently starts over.
    A checkpoint written with an incompatible config raises UserError naming the fields.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    unreadable = []
    for step in steps:
      try:
        saved = self.restore_config(step)["config"]
        metadata = self.manager.item_metadata(step)["state"]
      except Exception as e:  # pylint: disable=broad-except  (any damage: try the previous one)
        unreadable.append((step, e))
        continue
      # Shapes are compared from the metadata before anything is read: a restore that fails
      # half-way leaves orbax's reader threads behind, which print tracebacks at exit.
      self._check_fits(step, saved, metadata, abstract_state)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target))).state
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((step, e))
        continue
      for bad, error in unreadable:
        moved = self._set_aside(bad)
        logging.warning("The checkpoint at step %d could not be read (%s: %s); it was moved to "
                        "%s and training resumes from step %d.", bad, type(error).__name__,
                        _first_line(error), moved, step)
      if not quiet:
        diffs = config_differences(saved, self.config.to_dict())
        if diffs:
          logging.warning("Resuming step %d with config changes:\n  %s", step,
                          "\n  ".join(diffs))
      return restored
    raise config_lib.UserError(
        f"none of the checkpoints in {self.directory} can be read (steps "
        f"{[s for s, _ in unreadable]}; the latest fails with {type(unreadable[0][1]).__name__}: "
        f"{_first_line(unreadable[0][1])}). Move the folder away to start from scratch.")

  def _check_fits(self, step: int, saved: dict, metadata, abstract_state) -> None:
    arrays = array_differences(metadata, abstract_state)
    if arrays:
      diffs = config_differences(saved, self.config.to_dict())
      shape_diffs = [d for d in diffs if d.startswith(SHAPE_FIELDS)] or diffs
      raise config_lib.UserError(
          f"the checkpoint at step {step} in {self.directory} does not fit the current "
          "config; fields that differ:\n  " + "\n  ".join(shape_diffs or ["(none found)"])
          + "\nUse a new --workdir, or the checkpoint's config. Arrays that differ:\n  "
          + "\n  ".join(arrays[:5]) + ("\n  ..." if len(arrays) > 5 else ""))

  def _set_aside(self, step: int) -> str:
    """Moves an unreadable step out of the manager's folder (kept for inspection)."""
    target = epath.Path(self.directory).parent / "corrupt_checkpoints" / f"{step}_{int(time.time())}"
    target.parent.mkdir(parents=True, exist_ok=True)
    (epath.Path(self.directory) / str(step)).rename(target)
    self.manager.reload()
    return str(target)

  def restore_ema(self, abstract_ema, step: int | None = None):
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(
        ema=ocp.args.StandardRestore(abstract_ema))).ema


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__
