"""`python -m ebm_jax.sample`: samples of a trained run by the test-time chain.

The chain (paper §2.3, docs/reference.md §5) starts from uniform noise and runs
num_blocks × (block_steps Langevin steps + one augmentation transition), then final_steps
plain steps, under the EMA parameters. Output: a PNG grid (a scatter plot for 2-D data) and an
.npz with the samples, per-step chain diagnostics and, for conditional models, the labels.

  python -m ebm_jax.sample --workdir=runs/digits [--num=64 --steps=200 --out=DIR]
"""

import os

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
from absl import app, flags, logging

from ebm_jax import images, restore, sampling
from ebm_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags():
  cli.define_common_flags()
  cli.define_chain_flags()
  flags.DEFINE_integer("num", None, "Number of samples (default: config.sample.num).")
  flags.DEFINE_integer("steps", None, "Total Langevin steps (default: from config.sample).")
  flags.DEFINE_bool("augment", None, "Augmentation transitions between blocks.")
  flags.DEFINE_integer("label", -1, "Class/attribute index for conditional models "
                       "(-1: cycle through classes).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/samples).")


def _check_flags() -> None:
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  for name in ("num", "steps"):
    value = getattr(FLAGS, name)
    if value is not None and value < (1 if name != "steps" else 0):
      raise UserError(f"--{name}={value} must be positive")
  if FLAGS.label < -1:
    raise UserError(f"--label={FLAGS.label}: a class index, or -1 to cycle through the classes")


def run(argv) -> None:
  cli.no_positional(argv)
  _check_flags()
  trained = restore.load(FLAGS.workdir, FLAGS.step)
  info = trained.info
  if FLAGS.label >= max(info.num_classes, 1) or (FLAGS.label >= 0 and not info.num_classes):
    raise UserError(f"--label={FLAGS.label}: the model has {info.num_classes} classes"
                    + (" (it is unconditional)" if not info.num_classes else ""))
  trained = cli.apply_chain_flags(trained)
  settings = trained.settings
  num = FLAGS.num or settings.sample.num
  labels = sampling.default_labels(num, info.num_classes, FLAGS.label)
  sampler = sampling.for_model(settings, trained.model, info.shape, steps=FLAGS.steps,
                               augment=FLAGS.augment, batch_size=FLAGS.batch)
  x, diag = sampler.draw(jax.random.key(FLAGS.seed), num, labels, trained.variables)
  if settings.langevin.sampler in ("mala", "hmc"):
    logging.info("%s acceptance rate %.3f (mean over steps and chains)",
                 settings.langevin.sampler.upper(),
                 float(diag["accept_rate"].mean()))
  extra = {} if labels is None else {"labels": labels.argmax(-1)}
  name = f"sample_step{trained.step}_seed{FLAGS.seed}"
  png = images.save_samples(
      x, FLAGS.out or os.path.join(FLAGS.workdir, "samples"), name,
      energy_per_step=diag["energy"], grad_norm_per_step=diag["grad_norm"],
      accept_rate_per_step=diag["accept_rate"], **extra)
  print(f"wrote {png} and {png[:-4]}.npz")


def main(argv) -> None:
  cli.run_guarded(lambda: run(argv))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
