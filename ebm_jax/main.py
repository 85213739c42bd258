"""Entry point: python -m ebm_jax.main --config=configs/digits.py --workdir=runs/digits

The same command in the same workdir resumes from the latest checkpoint. Config fields can be
overridden on the command line (--config.train.num_steps=500); unknown fields and wrong types
are rejected when the flags are parsed.

Several processes (hosts, or one process per GPU): add --distributed (or set
EBM_DISTRIBUTED=1) and run the same command in every process. jax.distributed.initialize()
finds the other processes by itself on Cloud TPU and under Slurm; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I. Only process 0 logs and
writes metrics; every process takes part in checkpointing.
"""

import os

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ebm_jax import config_lib, distributed, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
cli.define_common_flags()
flags.DEFINE_bool("distributed", None, "Initialise JAX's multi-process runtime "
                  "(jax.distributed.initialize). Default: the EBM_DISTRIBUTED environment "
                  "variable (1/true), else off.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (with --distributed; "
                    "auto-detected on Cloud TPU and Slurm).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without a heartbeat after which the "
                     "other processes of a distributed run count a process as lost (with "
                     "--distributed). ebm_jax's watch stops the others with exit code 4 after "
                     "half of it; JAX's own check aborts them after all of it.")


def distributed_requested() -> bool:
  if FLAGS.distributed is not None:
    return FLAGS.distributed
  return os.environ.get("EBM_DISTRIBUTED", "").lower() in ("1", "true", "yes")


def init_distributed() -> None:
  """jax.distributed.initialize with the explicit flags where given (before any JAX work)."""
  given = {"coordinator_address": FLAGS.coordinator_address,
           "num_processes": FLAGS.num_processes, "process_id": FLAGS.process_id}
  if not distributed_requested():
    named = [f"--{k}" for k, v in given.items() if v is not None]
    if named:
      raise config_lib.UserError(f"{', '.join(named)} only apply with --distributed")
    return
  distributed.initialize(**given, heartbeat_timeout=FLAGS.heartbeat_timeout)


def main(argv) -> None:
  def run():
    cli.no_positional(argv)
    config = cli.load_config_flag()
    if not FLAGS.workdir:
      raise config_lib.UserError("--workdir is required, e.g. --workdir=runs/digits")
    init_distributed()
    logging.info("JAX %s on %d process(es), devices: %s; XLA_FLAGS=%r", jax.__version__,
                 jax.process_count(), jax.devices(), os.environ.get("XLA_FLAGS", ""))
    with distributed.watched():
      train.train_and_evaluate(config, FLAGS.workdir)

  cli.run_guarded(run)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)
