"""A trained run read back for sampling and evaluation, as one value (`Run`): the config as
saved, its typed settings, the data description, the net, the EMA variables of a checkpoint
and its step. Read-only: nothing in the workdir is written or moved. A damaged latest
checkpoint falls back to the previous readable one, with a warning.

`ebm_jax.load` (ebm_jax/api.py) is `load` here; the evaluators (ebm_jax/eval/), composition,
the command lines and the experiments take the Run it returns.
"""

import dataclasses
import os
from types import SimpleNamespace
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ebm_jax import config_lib, models, sampling
from ebm_jax.errors import UserError
from ebm_jax.settings import Settings

# (variables, x, y) -> (B,) energies summed over heads
SummedEnergy = Callable[..., jax.Array]


def summed_energy(model) -> SummedEnergy:
  """The one head-summed energy of a Flax energy net: (variables, x, y=None) -> (B,), the sum
  over heads of model.apply(variables, x, y); jittable."""
  return lambda variables, x, y=None: model.apply(variables, x, y).sum(-1)


def ema_variables(ema: dict) -> dict:
  """The Flax variables of a checkpoint's `ema` item: {"params": EMA params, **model_state}."""
  return {"params": ema["params"], **ema["model_state"]}


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: `config` as saved (for command lines and config.json), `settings` the
  typed value every evaluator reads (Settings.from_config(config) unless a command-line flag
  replaced fields: `with_sample`), the data description `info`, the Flax `model`, its EMA
  `variables` and the checkpoint `step`."""
  config: ml_collections.ConfigDict
  settings: Settings
  info: Any  # shape, num_classes, levels, class_names of the training data
  model: Any  # the Flax module
  variables: dict  # {"params": EMA params, **model_state}
  step: int

  @classmethod
  def of(cls, config, info, model, variables: dict, step: int = 0) -> "Run":
    """The Run of these parts, its settings built from `config`."""
    return cls(config=config, settings=Settings.from_config(config), info=info, model=model,
               variables=variables, step=int(step))

  def with_sample(self, **fields) -> "Run":
    """This run with fields of settings.sample replaced (the saved config is left as it was)."""
    if not fields:
      return self
    sample = dataclasses.replace(self.settings.sample, **fields)
    return dataclasses.replace(self, settings=self.settings.replace(sample=sample))

  def energy_fn(self) -> Callable[..., jax.Array]:
    """(x, y=None) -> (B,): the head-summed energy under this run's variables; jittable."""
    energy = summed_energy(self.model)
    return lambda x, y=None: energy(self.variables, x, y)

  def _labels(self, n: int, label: int | None) -> np.ndarray | None:
    if label is not None and not 0 <= label < max(self.info.num_classes, 1):
      raise UserError(f"label={label}: the model has {self.info.num_classes} classes")
    if label is not None and not self.info.num_classes:
      raise UserError(f"label={label}: the model is unconditional")
    return sampling.default_labels(n, self.info.num_classes, -1 if label is None else label)

  def sample(self, n: int, key: jax.Array | None = None, label: int | None = None,
             steps: int | None = None) -> np.ndarray:
    """n samples from uniform noise by the test-time chain of settings.sample (`steps` total
    Langevin steps overrides its length); conditional models cycle through the classes unless
    `label` is given."""
    if n < 1:
      raise UserError(f"n={n} must be at least 1")
    key = jax.random.key(0) if key is None else key
    x, _ = self._sampler(steps).draw(key, n, self._labels(n, label), self.variables)
    return x

  def _sampler(self, steps: int | None) -> sampling.Sampler:
    """One compiled sampler per chain length, kept for later calls (no recompilation)."""
    cache = self.__dict__.setdefault("_samplers", {})
    if steps not in cache:
      cache[steps] = sampling.for_model(self.settings, self.model, self.info.shape, steps=steps)
    return cache[steps]

  def energy(self, x, label: int | None = None) -> np.ndarray:
    """Energies (B,) of images x (B, H, W, C) in [0, 1], summed over heads (lower = likelier)."""
    x = jnp.asarray(x, jnp.float32)
    if x.shape[1:] != tuple(self.info.shape):
      raise UserError(f"x has shape {x.shape}; this model takes (B, *{tuple(self.info.shape)})")
    return np.asarray(self.energy_fn()(x, self._labels(x.shape[0], label)))


def load(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir` at its latest readable checkpoint (or `step`), with the EMA
  parameters, from a read-only checkpoint manager."""
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
      run = _restore_run(ckpt, candidate)
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
    return run
  ckpt.close()
  bad, error = failures[0]
  raise UserError(
      f"no readable checkpoint in --workdir={workdir}: step(s) {[s for s, _ in failures]} "
      f"cannot be read (step {bad}: {type(error).__name__}); rerun training to write one")


def _restore_run(ckpt, step: int) -> Run:
  """The Run of one checkpoint step."""
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
  return Run.of(config, info, model, ema_variables(ckpt.restore_ema(abstract, step)), step)
