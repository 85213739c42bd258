"""Compositional generation with independently trained energy models (paper §3.3, Fig. 10);
the command line is ebm_jax/compose.py.

A component is a trained run (restore.Run) with the label it is conditioned on (WORKDIR[:LABEL], LABEL a
class/attribute value name or index; none for an unconditional model). Operators on energies
E_1..E_M (summed over heads):
  and: Σ_i E_i                           (product of experts)
  or:  −T log Σ_i exp(−E_i / T)          (soft-min; T = --temperature)
  not: E_1 − α Σ_{i>1} E_i               (E_1 but not the others; α = --alpha)
Sampling is the test-time chain of the first model's config (blocks of Langevin steps with
augmentation transitions, then plain steps) with the step size divided by M, as the reference
code does. With --score on the procedural shapes data, attribute classifiers (trained by
`python -m ebm_jax.evaluate classifier --data=shapes --attribute=A`) measure how often samples
carry every requested attribute, for the composition, for each model alone, and by chance.

  components = [composition.load_component("runs/shape:circle"), ...]
  x = composition.sample(components, "and", jax.random.key(0), 64)
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax import restore, sampling
from ebm_jax.errors import UserError

OPS = ("and", "or", "not")
EnergyFn = Callable[[jax.Array], jax.Array]  # x (B, ...) -> (B,)


def combine(energies: list[jax.Array], op: str, *, temperature: float = 1.0,
            alpha: float = 1.0) -> jax.Array:
  """Composes per-model energies (each (B,)) into one (B,)."""
  if op not in OPS:
    raise ValueError(f"op must be one of {OPS}, got {op!r}")
  e = jnp.stack(energies)
  if op == "and":
    return e.sum(0)
  if op == "or":
    return -temperature * jax.nn.logsumexp(-e / temperature, axis=0)
  if len(energies) < 2:
    raise ValueError("not needs at least two models")
  return e[0] - alpha * e[1:].sum(0)


def composed_energy(energy_fns: list[EnergyFn], op: str, **kwargs) -> EnergyFn:
  return lambda x: combine([f(x) for f in energy_fns], op, **kwargs)


@dataclasses.dataclass(frozen=True)
class Component:
  """A trained run (restore.Run) with the label it is conditioned on, and where it was read."""
  run: restore.Run
  label: int | None  # class index, None for unconditional models
  workdir: str = ""

  @property
  def label_name(self) -> str:
    return "" if self.label is None else self.run.info.class_names[self.label]

  def energy(self, x: jax.Array) -> jax.Array:
    """E(x) (B,), heads summed, under this component's label."""
    return self.energy_with(self.run.variables, x)

  def energy_with(self, variables, x: jax.Array) -> jax.Array:
    """E(x) (B,), heads summed, under this component's label and the given variables."""
    y = None
    if self.label is not None:
      y = jnp.zeros((x.shape[0], self.run.info.num_classes)).at[:, self.label].set(1.0)
    return restore.summed_energy(self.run.model)(variables, x, y)


def parse_label(spec_label: str, info, workdir: str) -> int | None:
  if not info.num_classes:
    if spec_label:
      raise UserError(f"--model={workdir}:{spec_label}: the model is unconditional")
    return None
  names = tuple(info.class_names)
  if spec_label in names:
    return names.index(spec_label)
  if spec_label.isdigit() and int(spec_label) < info.num_classes:
    return int(spec_label)
  raise UserError(f"--model={workdir}:{spec_label}: the label must be one of "
                             f"{', '.join(names)} (or an index below {info.num_classes})")


def load_component(spec: str, step: int | None = None) -> Component:
  workdir, _, label = spec.partition(":")
  run = restore.load(workdir, step)
  return Component(run, parse_label(label, run.info, workdir), workdir)


def sample(components: list[Component], op: str, key: jax.Array, num: int, *,
                       steps: int | None = None, temperature: float = 1.0, alpha: float = 1.0,
                       augment: bool | None = None) -> np.ndarray:
  """num samples from the composed energy by the first model's test-time chain (the one
  sampler, ebm_jax/sampling.py), with the step size divided by the number of models."""
  first = components[0].run.settings  # the first model's chain and sampling settings
  shapes = {tuple(c.run.info.shape) for c in components}
  if len(shapes) != 1:
    raise UserError(f"the models take different inputs: {sorted(shapes)}")
  shape = tuple(components[0].run.info.shape)
  settings = sampling.settings_from_config(first, steps=steps)
  settings = settings._replace(chain=dataclasses.replace(
      settings.chain, step_size=settings.chain.step_size / len(components)))

  def energy(variables, x, y):
    del y  # each component brings its own label
    return combine([c.energy_with(v, x) for c, v in zip(components, variables)], op,
                   temperature=temperature, alpha=alpha)[:, None]

  x, _ = sampling.draw(energy, settings, key, num, shape,
                       variables=[c.run.variables for c in components],
                       batch_size=first.sample.batch_size,
                       transition=sampling.transition_from_config(first, shape, augment))
  return x


def attribute_success(samples: np.ndarray, requested: dict[str, int], classifiers: dict) -> dict:
  """Share of samples whose predicted value matches the request, per attribute and for all
  attributes at once; chance is the product of 1 / (number of values)."""
  hits = {a: classifiers[a].predict(samples) == v for a, v in requested.items()}
  every = np.logical_and.reduce(list(hits.values()))
  chance = float(np.prod([1.0 / classifiers[a].meta["num_classes"] for a in requested]))
  return {"all": float(every.mean()), **{a: float(h.mean()) for a, h in hits.items()},
          "chance": chance}


def score(components: list[Component], x: np.ndarray, key: jax.Array, cache_dir: str,
          **sample_kwargs) -> dict:
  """Attribute success of an `and` composition of conditional shapes models: for the samples
  x, and for as many samples of each model alone (same key and chain)."""
  from ebm_jax.eval import features  # pylint: disable=import-outside-toplevel
  data = [c.run.settings.data for c in components]
  if any(d.name != "shapes" or c.label is None for d, c in zip(data, components)):
    raise UserError("--score measures --op=and compositions of conditional models of the "
                    "shapes data")
  requested = {d.attribute: c.label for d, c in zip(data, components)}
  classifiers = {d.attribute: features.load_classifier(d, d.attribute, cache_dir) for d in data}
  table = {"composition": attribute_success(x, requested, classifiers)}
  for d, c in zip(data, components):
    alone = sample([c], "and", key, len(x), **sample_kwargs)
    table[f"{d.attribute}={c.label_name} alone"] = attribute_success(
        alone, requested, classifiers)
  return table
