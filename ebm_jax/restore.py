"""A trained run read back for sampling and evaluation: config, data description, net and EMA
parameters of a checkpoint, read-only (nothing in the workdir is written or moved). A damaged
latest checkpoint falls back to the previous readable one, with a warning."""

import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from absl import logging

from ebm_jax import config_lib, models
from ebm_jax.errors import UserError


def ema_variables(ema: dict) -> dict:
  """The Flax variables of a checkpoint's `ema` item: {"params": EMA params, **model_state}."""
  return {"params": ema["params"], **ema["model_state"]}


def load_for_sampling(workdir: str, step: int | None = None):
  """(config, data_info, model, ema item, step) from a read-only checkpoint manager."""
  from ebm_jax import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
  directory = checkpoint_lib.checkpoint_dir(workdir)
  if not os.path.isdir(directory) and "://" not in directory:
    raise UserError(f"no checkpoint in --workdir={workdir} (no {directory}); "
                    "train first: python -m ebm_jax.main --config=... --workdir=...")
  ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
  steps = ckpt.manager.all_steps()
  if not steps:
    raise UserError(f"no checkpoint in --workdir={workdir}; train first")
  if step is not None and step not in steps:
    raise UserError(f"--step={step} is not among the checkpoints {sorted(steps)}")
  failures = []
  for candidate in ([step] if step is not None else sorted(steps, reverse=True)):
    try:
      config, info, model, ema = _restore_ema(ckpt, candidate)
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (a damaged checkpoint: the previous)
      failures.append((candidate, e))
      continue
    for bad, error in failures:
      logging.warning("The checkpoint at step %d in %s could not be read (%s: %s); using step "
                      "%d instead (read-only: nothing was moved).", bad, workdir,
                      type(error).__name__, str(error).strip().splitlines()[0][:200] if str(error)
                      else "", candidate)
    ckpt.close()
    return config, info, model, ema, candidate
  ckpt.close()
  bad, error = failures[0]
  raise UserError(
      f"no readable checkpoint in --workdir={workdir}: step(s) {[s for s, _ in failures]} "
      f"cannot be read (step {bad}: {type(error).__name__}); rerun training to write one")


def _restore_ema(ckpt, step: int):
  """(config, info, model, EMA item) of one checkpoint step."""
  saved = ckpt.restore_config(step)
  config = config_lib.with_defaults(saved["config"])
  info = SimpleNamespace(**saved["data_info"])
  info.shape = tuple(info.shape)
  model = models.make_model(config.model, info.shape, info.num_classes)
  x = jnp.zeros((1,) + info.shape)
  y = jnp.zeros((1, info.num_classes)) if info.num_classes else None
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, y))
  abstract = {"params": variables["params"],
              "model_state": {k: v for k, v in variables.items() if k != "params"}}
  return config, info, model, ckpt.restore_ema(abstract, step)
