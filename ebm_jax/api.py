"""A trained run in three lines, read-only:

  import ebm_jax, jax
  run = ebm_jax.load("runs/digits")              # latest checkpoint (or step=N), EMA parameters
  x = run.sample(16, key=jax.random.key(0))      # (16, H, W, C) in [0, 1], test-time chain
  e = run.energy(x)                              # (16,) energies, heads summed

Nothing in the workdir is written or moved.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebm_jax import restore, sampling
from ebm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Run:
  """A restored run: its config, data description, net, EMA variables and checkpoint step."""
  config: ml_collections.ConfigDict
  info: Any  # shape, num_classes, levels, class_names of the training data
  model: Any  # the Flax module
  variables: dict  # {"params": EMA params, **model_state}
  step: int

  def _labels(self, n: int, label: int | None) -> np.ndarray | None:
    if label is not None and not 0 <= label < max(self.info.num_classes, 1):
      raise UserError(f"label={label}: the model has {self.info.num_classes} classes")
    if label is not None and not self.info.num_classes:
      raise UserError(f"label={label}: the model is unconditional")
    return sampling.default_labels(n, self.info.num_classes, -1 if label is None else label)

  def sample(self, n: int, key: jax.Array | None = None, label: int | None = None,
             steps: int | None = None) -> np.ndarray:
    """n samples from uniform noise by the test-time chain of config.sample (`steps` total
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
      cache[steps] = sampling.for_model(self.config, self.model, self.info.shape, steps=steps)
    return cache[steps]

  def energy(self, x, label: int | None = None) -> np.ndarray:
    """Energies (B,) of images x (B, H, W, C) in [0, 1], summed over heads (lower = likelier)."""
    x = jnp.asarray(x, jnp.float32)
    if x.shape[1:] != tuple(self.info.shape):
      raise UserError(f"x has shape {x.shape}; this model takes (B, *{tuple(self.info.shape)})")
    y = self._labels(x.shape[0], label)
    return np.asarray(self.model.apply(self.variables, x, y).sum(-1))


def load(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir` at its latest checkpoint (or `step`), with the EMA parameters."""
  config, info, model, ema, step = restore.load_for_sampling(workdir, step)
  return Run(config=config, info=info, model=model,
             variables=restore.ema_variables(ema), step=int(step))
