"""`python -m ebm_jax.compose`: samples from a composition of trained energy models (paper §3.3,
Fig. 10); the operators and the chain are described in ebm_jax/composition.py.

  python -m ebm_jax.compose --model=runs/shape:circle --model=runs/color:red --op=and \
      [--num=64 --steps=... --temperature=1 --alpha=1 --score --out=DIR]
"""

import json
import os

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
from absl import app, flags

from ebm_jax import composition, files, images
from ebm_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_common_flags(workdir=False)
  flags.DEFINE_multi_string("model", None, "WORKDIR[:LABEL] of a model to compose (repeat).")
  flags.DEFINE_enum("op", "and", composition.OPS, "How to compose the energies.")
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


def _check_flags(specs: list[str]) -> None:
  if not specs or (FLAGS.op == "not" and len(specs) < 2):
    raise UserError("--model: give at least one model (two for --op=not)")
  if FLAGS.num < 1 or (FLAGS.steps is not None and FLAGS.steps < 0):
    raise UserError("--num must be >= 1 and --steps >= 0")
  if FLAGS.temperature <= 0:
    raise UserError("--temperature must be > 0")
  if FLAGS.score and FLAGS.op != "and":
    raise UserError("--score measures --op=and compositions of conditional models of the "
                    "shapes data")


def run(argv) -> None:
  cli.no_positional(argv)
  specs = FLAGS.model or []
  _check_flags(specs)
  components = [composition.load_component(s) for s in specs]
  key = jax.random.key(FLAGS.seed)
  kwargs = dict(steps=FLAGS.steps, temperature=FLAGS.temperature, alpha=FLAGS.alpha,
                augment=FLAGS.augment)
  x = composition.sample(components, FLAGS.op, key, FLAGS.num, **kwargs)
  out = FLAGS.out or os.path.join(components[0].workdir, "compose")
  name = FLAGS.op + "_" + "_".join(c.label_name or "uncond" for c in components)
  print(f"wrote {images.save_samples(x, out, name)}")
  if FLAGS.score:
    table = composition.score(components, x, key, FLAGS.cache_dir or files.cache_dir(), **kwargs)
    result = {"op": FLAGS.op, "models": specs, "num": FLAGS.num, "success": table}
    text = json.dumps(result, indent=2)
    cli.write_text(os.path.join(out, f"{name}.json"), text + "\n")
    print(text)


def main(argv) -> None:
  cli.run_guarded(lambda: run(argv))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
