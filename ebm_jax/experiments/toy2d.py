"""`python -m ebm_jax.experiments.toy2d`: every training regime on the 2-D densities, judged by
exact (grid-integrated) held-out likelihood with AIS beside it; resumable.

  python -m ebm_jax.experiments.toy2d --workdir=runs/toy2d [--regimes=icd,no_kl \\
      --densities=rings --seeds=0,1,2 --steps=3000]

What each regime is and what is written: ebm_jax/experiments/toy2d_lib.py.
"""

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

from absl import app, flags

from ebm_jax.errors import UserError
from ebm_jax.experiments import toy2d_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_common_flags()  # --workdir: one sub-folder per regime, density and seed
  flags.DEFINE_list("regimes", list(toy2d_lib.REGIME_NAMES),
                    f"Regimes, of {', '.join(toy2d_lib.REGIME_NAMES)}.")
  flags.DEFINE_list("densities", list(toy2d_lib.DENSITIES),
                    f"Densities, of {', '.join(toy2d_lib.DENSITIES)}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every (regime, density) runs each.")
  flags.DEFINE_integer("steps", 3000, "Training steps of every run.")
  flags.DEFINE_integer("chains", 512, "AIS chains.")
  flags.DEFINE_integer("temperatures", 1000, "AIS temperatures.")
  flags.DEFINE_bool("report_only", False, "Write the table and figure from the finished runs; "
                    "train nothing.")


def run() -> None:
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  for flag, allowed in (("regimes", toy2d_lib.REGIME_NAMES), ("densities", toy2d_lib.DENSITIES)):
    unknown = [v for v in FLAGS[flag].value if v not in allowed]
    if unknown or not FLAGS[flag].value:
      raise UserError(f"--{flag}: unknown or none {unknown}; choose from {list(allowed)}")
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise UserError(f"--seeds must be integers: {FLAGS.seeds}") from e
  if FLAGS.steps < 1 or FLAGS.chains < 2 or FLAGS.temperatures < 1 or min(seeds) < 0:
    raise UserError("--steps >= 1, --chains >= 2, --temperatures >= 1 and seeds >= 0 please")
  print(toy2d_lib.run_all(FLAGS.workdir, regime_names=list(FLAGS.regimes),
                          densities=list(FLAGS.densities), seeds=seeds, steps=FLAGS.steps,
                          chains=FLAGS.chains, temperatures=FLAGS.temperatures,
                          report_only=FLAGS.report_only))


def main(argv) -> None:
  cli.run_guarded(lambda: (cli.no_positional(argv), run()))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
