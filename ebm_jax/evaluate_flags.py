"""The flags of `python -m ebm_jax.evaluate` and their checks, made before any model work
(evaluate.py dispatches; the fid command's own flags are in evaluate_fid.py)."""

from absl import flags

from ebm_jax import cli, evaluate_fid
from ebm_jax.errors import UserError
from ebm_jax.eval import likelihood, ood

FLAGS = flags.FLAGS
NEIGHBOUR_ROWS = 8  # samples of the `neighbours` grid unless --num says
COMMANDS = ("classifier", "quality", "fid", "ood", "export", "accuracy", "likelihood",
            "neighbours")


def define_flags() -> None:
  cli.define_common_flags()
  cli.define_chain_flags()
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_integer("num", None, "Samples / test images / OOD images to use (default: "
                       f"{evaluate_fid.NUM} for fid, {NEIGHBOUR_ROWS} for neighbours, 1000 "
                       "otherwise).")
  flags.DEFINE_integer("steps", None, "Langevin steps of the sampling chain (default: config).")
  flags.DEFINE_integer("seed", 0, "Seed of sampling and of the data subsets.")
  flags.DEFINE_integer("eval_every", 0, "quality: run one long chain of --steps steps and "
                       "measure the samples every this many steps (0: only at the end).")
  flags.DEFINE_list("ood", ["uniform", "constant", "interpolation", "flip_v"],
                    f"OOD sets: {', '.join(ood.OOD_SETS)} or paths to .npz files.")
  flags.DEFINE_string("cache_dir", None, "Where feature classifiers are kept "
                      "(default: $EBM_JAX_CACHE or ~/.cache/ebm_jax).")
  cli.define_evaluate_flags()
  evaluate_fid.define_flags()
  flags.DEFINE_integer("neighbours", 8, "neighbours: training images shown beside each sample.")
  flags.DEFINE_integer("train_num", 0, "neighbours: training images searched (0: the whole "
                       "training split).")
  flags.DEFINE_string("png", None, "neighbours: the grid's path (default: "
                      "WORKDIR/neighbours.png).")
  flags.DEFINE_string("out", None, "Also write the JSON result here (export: the folder).")


def check_flags(command: str) -> int:
  """Raises UserError on flags that cannot work together; returns --num or its default."""
  default = {"fid": evaluate_fid.NUM, "neighbours": NEIGHBOUR_ROWS}.get(command, 1000)
  num = FLAGS.num if FLAGS.num is not None else default
  if command == "neighbours":
    if num < 1 or FLAGS.neighbours < 1 or FLAGS.train_num < 0:
      raise UserError(f"--num={num} and --neighbours={FLAGS.neighbours} must be >= 1 and "
                      f"--train_num={FLAGS.train_num} >= 0")
  elif num < 2:
    raise UserError(f"--num={num} must be at least 2")
  if FLAGS.steps is not None and FLAGS.steps < 0:
    raise UserError(f"--steps={FLAGS.steps} must be >= 0")
  if FLAGS.eval_every < 0 or (FLAGS.eval_every and (FLAGS.steps or 0) < FLAGS.eval_every):
    raise UserError("--eval_every must be >= 0, and with it --steps >= --eval_every")
  if command == "classifier" and FLAGS.classifier_steps < 1:
    raise UserError("--classifier_steps must be >= 1")
  if command == "fid":
    evaluate_fid.check_flags()
  elif command != "classifier" and not FLAGS.workdir:
    raise UserError("--workdir is required")
  if command == "likelihood":
    likelihood.check_settings(FLAGS.chains, FLAGS.temperatures, FLAGS.ais_step_size,
                              FLAGS.leapfrog_steps, FLAGS.temperature)
  if command == "ood":  # every set readable before any model work
    ood.check_sets(list(FLAGS.ood))
  return num
