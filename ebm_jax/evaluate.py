"""`python -m ebm_jax.evaluate COMMAND`: the command-line layer over ebm_jax/eval/.

  python -m ebm_jax.evaluate classifier --data=fashion_mnist [--data_path=DIR]   # once per dataset
  python -m ebm_jax.evaluate quality --workdir=runs/fmnist [--num=1000 --steps=5000 --eval_every=500]
  python -m ebm_jax.evaluate ood --workdir=runs/fmnist [--ood=uniform,flip_v,my_set.npz]
  python -m ebm_jax.evaluate fid --workdir=runs/fm_cpu --num=10000    # evaluate_fid.py
  python -m ebm_jax.evaluate export --workdir=runs/cifar10 --num=50000   # PNGs for other tools
  python -m ebm_jax.evaluate neighbours --workdir=runs/fm_cpu [--num=8 --neighbours=8]
  python -m ebm_jax.evaluate accuracy --workdir=runs/jem                 # JEM's classifier
  python -m ebm_jax.evaluate likelihood --workdir=runs/rings [--chains=512 --sampler=hmc]

`fid`: the standard FID (eval/fid.py); `quality`: Fréchet distance in the project's own
classifier features (eval/quality.py), a development signal; `ood`: −E(x) as a detector;
`neighbours`: samples beside their nearest training images in pixel space (eval/neighbours.py).
The flags and their checks are in evaluate_flags.py.
"""

import json
import os

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

from absl import app, flags

from ebm_jax import evaluate_fid, evaluate_flags, files, images, restore
from ebm_jax.errors import UserError
from ebm_jax.eval import features, jem, likelihood, neighbours, ood, quality

FLAGS = flags.FLAGS
define_flags = evaluate_flags.define_flags


def _emit(result: dict) -> None:
  text = json.dumps(result, indent=2)
  print(text, flush=True)
  if FLAGS.out:
    cli.write_text(FLAGS.out, text + "\n")


def run(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in evaluate_flags.COMMANDS:
    raise UserError(f"give one command: {' | '.join(evaluate_flags.COMMANDS)} "
                    f"(got {' '.join(argv[1:]) or 'none'})")
  command = argv[1]
  num = evaluate_flags.check_flags(command)
  cache_dir = FLAGS.cache_dir or files.cache_dir()
  if command == "fid":
    return _emit(evaluate_fid.run(num, cache_dir))
  if command == "classifier":
    return features.classifier_command(FLAGS.data, FLAGS.data_path, FLAGS.image_size,
                                       FLAGS.channels, FLAGS.attribute, FLAGS.classifier_steps,
                                       FLAGS.seed, cache_dir)
  trained = cli.apply_chain_flags(restore.load(FLAGS.workdir, FLAGS.step))
  head = {"command": command, "workdir": FLAGS.workdir, "step": trained.step}
  if command == "quality":
    data = trained.settings.data
    net = features.load_classifier(data, data.attribute, cache_dir)
    result = quality.evaluate(trained, net, num=num, steps=FLAGS.steps, seed=FLAGS.seed,
                              eval_every=FLAGS.eval_every, log=lambda s: print(s, flush=True))
  elif command == "likelihood":
    result = likelihood.evaluate(trained, num=num, chains=FLAGS.chains, sampler=FLAGS.sampler,
        temperatures=FLAGS.temperatures, step_size=FLAGS.ais_step_size, seed=FLAGS.seed,
        leapfrog_steps=FLAGS.leapfrog_steps, temperature=FLAGS.temperature)
  elif command == "accuracy":
    result = jem.accuracy(trained, num, seed=FLAGS.seed)
  elif command == "neighbours":
    result = neighbours.neighbours(
        trained, num=num, k=FLAGS.neighbours, steps=FLAGS.steps, seed=FLAGS.seed,
        train_num=FLAGS.train_num, batch_size=FLAGS.batch,
        out_png=FLAGS.png or os.path.join(FLAGS.workdir, "neighbours.png"))
    print(f"wrote {result['grid']}", flush=True)
  elif command == "ood":
    done = {}

    def on_set(name, row):  # printed and written as each set finishes: a failure loses nothing
      done[name] = row
      print(f"{name}: AUROC {row['auroc']:.3f}", flush=True)
      if FLAGS.out:
        cli.write_text(FLAGS.out, json.dumps({**head, "sets": done, "partial": True}, indent=2))

    result = ood.ood(trained, list(FLAGS.ood), num=num, seed=FLAGS.seed, on_set=on_set)
    print(ood.markdown_table(result))
  else:
    out = FLAGS.out or os.path.join(FLAGS.workdir, "export")
    images.export_samples(quality.generate_samples(
        trained, num, steps=FLAGS.steps, seed=FLAGS.seed, batch_size=FLAGS.batch), out)
    print(f"wrote {num} PNG files and samples.npz to {out}")
    return None
  return _emit({**head, **result})


def main(argv) -> None:
  cli.run_guarded(lambda: run(argv))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
