"""Entry point: python -m ebm_jax.main --config=configs/digits.py --workdir=runs/digits

The same command in the same workdir resumes from the latest checkpoint. Config fields can be
overridden on the command line (--config.train.num_steps=500); unknown fields and wrong types
are rejected when the flags are parsed.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ebm_jax import cli, config_lib, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_bool("debug", False, "Show tracebacks for user errors.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")

  def run():
    config = cli.load_config_flag()
    if not FLAGS.workdir:
      raise config_lib.UserError("--workdir is required, e.g. --workdir=runs/digits")
    logging.info("JAX %s on %d process(es), devices: %s", jax.__version__,
                 jax.process_count(), jax.devices())
    train.train_and_evaluate(config, FLAGS.workdir)

  cli.run_guarded(run)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)
