"""`python -m ebm_jax.experiments.ablation`: the paper's ablation (ICD Table 2), resumable.

  python -m ebm_jax.experiments.ablation --config=configs/digits.py --workdir=runs/ablation \
      [--rows=base,+aug --seeds=0,1 --steps=1500 --num=500 --fid_num=10000]

The rows, their metrics and the stability verdict are described in ablation_lib.py. A rerun
skips finished rows and resumes an interrupted one from its checkpoints.
"""

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from ebm_jax import config_lib, files
from ebm_jax.errors import UserError
from ebm_jax.experiments import ablation_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Base config; rows change it cumulatively.",
                                  lock_config=True)
  cli.define_common_flags()  # --workdir: the ablation's folder, one sub-folder per row
  names = ablation_lib.ROW_NAMES
  flags.DEFINE_list("rows", list(names), f"Rows to run, of {', '.join(names)}.")
  flags.DEFINE_list("seeds", ["0"], "Seeds; every row runs each.")
  flags.DEFINE_integer("steps", None, "Training steps per row (default: the config's).")
  flags.DEFINE_float("gap_bound", 1e3, "Divergence: |E+ - E-| above this ...")
  flags.DEFINE_integer("gap_patience", 10, "... for this many consecutive steps (or non-finite).")
  flags.DEFINE_integer("num", 500, "Samples and test images for the quality and OOD metrics.")
  flags.DEFINE_integer("fid_num", 0, "Also the standard FID of this many EMA samples per row "
                       "against the whole test split (0: none; the papers use 10000). Needs the "
                       "FID network (README, Evaluation).")
  flags.DEFINE_string("cache_dir", None, "Feature classifiers (default: $EBM_JAX_CACHE or "
                      "~/.cache/ebm_jax).")
  flags.DEFINE_integer("classifier_steps", 1500, "Steps of the feature classifier, trained "
                       "once per dataset when the cache has none.")


def _checked_seeds() -> list[int]:
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  unknown = [r for r in FLAGS.rows if r not in ablation_lib.ROW_NAMES]
  if unknown:
    raise UserError(f"--rows: unknown {unknown}; choose from {list(ablation_lib.ROW_NAMES)}")
  if FLAGS.steps is not None and FLAGS.steps < 1:
    raise UserError("--steps must be at least 1")
  if (FLAGS.gap_bound <= 0 or FLAGS.gap_patience < 1 or FLAGS.num < 2
      or FLAGS.classifier_steps < 1 or FLAGS.fid_num < 0 or FLAGS.fid_num == 1):
    raise UserError("--gap_bound must be > 0, --gap_patience >= 1, --num >= 2, "
                    "--classifier_steps >= 1, --fid_num 0 or >= 2")
  try:
    return [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise UserError(f"--seeds must be integers: {FLAGS.seeds}") from e


def run() -> None:
  base = cli.load_config_flag()
  seeds = _checked_seeds()
  base = ml_collections.ConfigDict(base.to_dict())
  if FLAGS.steps is not None:
    base.train.num_steps = FLAGS.steps
  ablation_lib.stability_config(base, FLAGS.gap_bound, FLAGS.gap_patience)
  config_lib.validate(base)
  header = (f"Ablation of {base.data.name} ({base.model.name} F={base.model.features}), "
            f"{base.train.num_steps} steps per row, seeds {seeds}; divergence: non-finite or "
            f"|E+ − E−| > {FLAGS.gap_bound:g} for {FLAGS.gap_patience} steps.")
  print(ablation_lib.run_ablation(
      base, FLAGS.workdir, row_names=list(FLAGS.rows), seeds=seeds, num=FLAGS.num,
      cache_dir=FLAGS.cache_dir or files.cache_dir(), classifier_steps=FLAGS.classifier_steps,
      header=header, fid_num=FLAGS.fid_num))


def main(argv) -> None:
  cli.run_guarded(lambda: (cli.no_positional(argv), run()))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
