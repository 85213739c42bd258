"""Compositional generation with independently trained energy models (paper §3.3, Fig. 10).

  python -m ebm_jax.compose --model=runs/shape:circle --model=runs/color:red --op=and \
      [--num=64 --steps=... --temperature=1 --alpha=1 --score --out=DIR]

Each --model is WORKDIR[:LABEL], LABEL a class/attribute value name or index of a conditional
model (none for an unconditional one). Operators on energies E_1..E_M (summed over heads):
  and: Σ_i E_i                           (product of experts)
  or:  −T log Σ_i exp(−E_i / T)          (soft-min; T = --temperature)
  not: E_1 − α Σ_{i>1} E_i               (E_1 but not the others; α = --alpha)
Sampling is the test-time chain of the first model's config (blocks of Langevin steps with
augmentation transitions, then plain steps) with the step size divided by M, as the reference
code does. With --score on the procedural shapes data, attribute classifiers (trained by
`python -m ebm_jax.evaluate classifier --data=shapes --attribute=A`) measure how often samples
carry every requested attribute, for the composition, for each model alone, and by chance.
"""

import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ebm_jax import cli, config_lib
from ebm_jax import sample as sample_lib
from ebm_jax import sampling

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


@dataclasses.dataclass
class Component:
  """One trained model with the label it is conditioned on."""
  workdir: str
  config: object
  info: object
  model: object
  variables: dict
  label: int | None  # class index, None for unconditional models

  @property
  def label_name(self) -> str:
    return "" if self.label is None else self.info.class_names[self.label]

  def energy(self, x: jax.Array) -> jax.Array:
    """E(x) (B,), heads summed, under this component's label."""
    return self.energy_with(self.variables, x)

  def energy_with(self, variables, x: jax.Array) -> jax.Array:
    y = None
    if self.label is not None:
      y = jnp.zeros((x.shape[0], self.info.num_classes)).at[:, self.label].set(1.0)
    return self.model.apply(variables, x, y).sum(-1)


def parse_label(spec_label: str, info, workdir: str) -> int | None:
  if not info.num_classes:
    if spec_label:
      raise config_lib.UserError(f"--model={workdir}:{spec_label}: the model is unconditional")
    return None
  names = tuple(info.class_names)
  if spec_label in names:
    return names.index(spec_label)
  if spec_label.isdigit() and int(spec_label) < info.num_classes:
    return int(spec_label)
  raise config_lib.UserError(f"--model={workdir}:{spec_label}: the label must be one of "
                             f"{', '.join(names)} (or an index below {info.num_classes})")


def load_component(spec: str, step: int | None = None) -> Component:
  workdir, _, label = spec.partition(":")
  config, info, model, ema, _ = sample_lib.load_for_sampling(workdir, step)
  return Component(workdir, config, info, model,
                   sample_lib.ema_variables(ema),
                   parse_label(label, info, workdir))


def sample_composition(components: list[Component], op: str, key: jax.Array, num: int, *,
                       steps: int | None = None, temperature: float = 1.0, alpha: float = 1.0,
                       augment: bool | None = None) -> np.ndarray:
  """num samples from the composed energy by the first model's test-time chain (the one
  sampler, ebm_jax/sampling.py), with the step size divided by the number of models."""
  first = components[0]
  shapes = {tuple(c.info.shape) for c in components}
  if len(shapes) != 1:
    raise config_lib.UserError(f"the models take different inputs: {sorted(shapes)}")
  shape = tuple(first.info.shape)
  settings = sampling.settings_from_config(first.config, steps=steps)
  settings = settings._replace(step_size=settings.step_size / len(components))

  def energy(variables, x, y):
    del y  # each component brings its own label
    return combine([c.energy_with(v, x) for c, v in zip(components, variables)], op,
                   temperature=temperature, alpha=alpha)[:, None]

  x, _ = sampling.draw(energy, settings, key, num, shape,
                       variables=[c.variables for c in components],
                       batch_size=first.config.sample.batch_size,
                       transition=sampling.transition_from_config(first.config, shape, augment))
  return x


def attribute_success(samples: np.ndarray, requested: dict[str, int], classifiers: dict) -> dict:
  """Share of samples whose predicted value matches the request, per attribute and for all
  attributes at once; chance is the product of 1 / (number of values)."""
  hits = {a: classifiers[a].predict(samples) == v for a, v in requested.items()}
  every = np.logical_and.reduce(list(hits.values()))
  chance = float(np.prod([1.0 / classifiers[a].meta["num_classes"] for a in requested]))
  return {"all": float(every.mean()), **{a: float(h.mean()) for a, h in hits.items()},
          "chance": chance}


FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_common_flags(workdir=False)
  flags.DEFINE_multi_string("model", None, "WORKDIR[:LABEL] of a model to compose (repeat).")
  flags.DEFINE_enum("op", "and", OPS, "How to compose the energies.")
  flags.DEFINE_float("temperature", 1.0, "Soft-min temperature of `or`.")
  flags.DEFINE_float("alpha", 1.0, "Weight of the negated models in `not`.")
  flags.DEFINE_integer("num", 64, "Number of samples.")
  flags.DEFINE_integer("steps", None, "Total Langevin steps (default: the first config's).")
  flags.DEFINE_bool("augment", None, "Augmentation transitions between blocks.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_bool("score", False, "Score attributes with the shapes attribute classifiers, "
                    "for the composition and for each model alone.")
  flags.DEFINE_string("cache_dir", None, "Feature/attribute classifiers (see evaluate).")
  flags.DEFINE_string("out", None, "Output folder (default: the first workdir's compose/).")


def run(argv) -> None:
  cli.no_positional(argv)
  from ebm_jax.eval import features  # pylint: disable=import-outside-toplevel
  specs = FLAGS.model or []
  if not specs or (FLAGS.op == "not" and len(specs) < 2):
    raise config_lib.UserError("--model: give at least one model (two for --op=not)")
  if FLAGS.num < 1 or (FLAGS.steps is not None and FLAGS.steps < 0):
    raise config_lib.UserError("--num must be >= 1 and --steps >= 0")
  if FLAGS.temperature <= 0:
    raise config_lib.UserError("--temperature must be > 0")
  components = [load_component(s) for s in specs]
  if FLAGS.score and (FLAGS.op != "and" or any(
      c.config.data.name != "shapes" or c.label is None for c in components)):
    raise config_lib.UserError("--score measures --op=and compositions of conditional models "
                               "of the shapes data")
  key = jax.random.key(FLAGS.seed)
  kwargs = dict(steps=FLAGS.steps, temperature=FLAGS.temperature, alpha=FLAGS.alpha,
                augment=FLAGS.augment)
  x = sample_composition(components, FLAGS.op, key, FLAGS.num, **kwargs)
  out = FLAGS.out or os.path.join(components[0].workdir, "compose")
  os.makedirs(out, exist_ok=True)
  name = FLAGS.op + "_" + "_".join(c.label_name or "uncond" for c in components)
  png = os.path.join(out, f"{name}.png")
  sample_lib.save_png(sample_lib.make_grid(x), png, scale=max(1, 128 // x.shape[1]))
  np.savez_compressed(os.path.join(out, f"{name}.npz"), samples=x)
  print(f"wrote {png}")
  if not FLAGS.score:
    return
  cache_dir = FLAGS.cache_dir or cli.cache_dir()
  requested = {c.config.data.attribute: c.label for c in components}
  classifiers = {c.config.data.attribute: features.load_classifier(
      c.config.data, c.config.data.attribute, cache_dir) for c in components}
  table = {"composition": attribute_success(x, requested, classifiers)}
  for c in components:
    alone = sample_composition([c], "and", key, FLAGS.num, **kwargs)
    table[f"{c.config.data.attribute}={c.label_name} alone"] = attribute_success(
        alone, requested, classifiers)
  result = {"op": FLAGS.op, "models": specs, "num": FLAGS.num, "success": table}
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


def main(argv) -> None:
  cli.run_guarded(lambda: run(argv))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
