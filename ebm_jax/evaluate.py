"""`python -m ebm_jax.evaluate COMMAND`: the command-line layer over ebm_jax/eval/.

  python -m ebm_jax.evaluate classifier --data=fashion_mnist [--data_path=DIR]   # once per dataset
  python -m ebm_jax.evaluate quality --workdir=runs/fmnist [--num=1000 --steps=90 --step_size=60]
  python -m ebm_jax.evaluate quality --workdir=runs/fmnist --steps=5000 --eval_every=500
  python -m ebm_jax.evaluate ood --workdir=runs/fmnist [--ood=uniform,flip_v,my_set.npz]
  python -m ebm_jax.evaluate fid --workdir=runs/fm_cpu --num=10000    # the standard FID
  python -m ebm_jax.evaluate fid --samples=gen.npz --data=cifar10 --ref=train
  python -m ebm_jax.evaluate fid --samples=train --data=fashion_mnist   # the floor: train vs test
  python -m ebm_jax.evaluate export --workdir=runs/cifar10 --num=50000   # PNGs for other tools
  python -m ebm_jax.evaluate accuracy --workdir=runs/jem                 # JEM's classifier
  python -m ebm_jax.evaluate likelihood --workdir=runs/rings [--chains=512 --sampler=hmc]

`fid`: the standard FID (TF Inception-v3 pool3 features, eval/fid.py).
Quality: Fréchet distance of the project's classifier features (eval/features.py,
eval/quality.py) and class coverage, a development signal; `export` writes PNGs; OOD scores images by −E(x) (eval/ood.py);
`likelihood` estimates log Z by annealed importance sampling (eval/likelihood.py).
"""

import json
import os
import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import numpy as np
from absl import app, flags

from ebm_jax import files, images, restore
from ebm_jax.errors import UserError
from ebm_jax.eval import features, fid, inception, jem, likelihood, ood, quality

FLAGS = flags.FLAGS
COMMANDS = ("classifier", "quality", "fid", "ood", "export", "accuracy", "likelihood")
FID_NUM = 10_000  # the papers' protocol: 10k samples (CIFAR-10 papers also use 50k)


def define_flags() -> None:
  cli.define_common_flags()
  cli.define_chain_flags()
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_integer("num", None, "Samples / test images / OOD images to use (default: "
                       f"{FID_NUM} for fid, 1000 otherwise).")
  flags.DEFINE_integer("batch", None, "Chains sampled at a time (default: config.sample."
                       "batch_size).")
  flags.DEFINE_integer("fid_batch", 50, "fid: images per call of the FID network.")
  flags.DEFINE_integer("steps", None, "Langevin steps of the sampling chain (default: config).")
  flags.DEFINE_integer("seed", 0, "Seed of sampling and of the data subsets.")
  flags.DEFINE_integer("eval_every", 0, "quality: run one long chain of --steps steps and "
                       "measure the samples every this many steps (0: only at the end).")
  flags.DEFINE_list("ood", ["uniform", "constant", "interpolation", "flip_v"],
                    f"OOD sets: {', '.join(ood.OOD_SETS)} or paths to .npz files.")
  flags.DEFINE_string("cache_dir", None, "Where feature classifiers are kept "
                      "(default: $EBM_JAX_CACHE or ~/.cache/ebm_jax).")
  cli.define_evaluate_flags()
  flags.DEFINE_string("samples", None, "fid: an .npz of images to score (uint8 NHWC or floats "
                      "in [0, 1], under 'images' or 'samples'), or train/test for a split of "
                      "--data; instead of samples drawn from --workdir.")
  flags.DEFINE_string("ref", "test", "fid: the reference, test or train (a split of the run's "
                      "or --data's dataset, statistics cached) or an .npz of images or of "
                      "statistics (mu, sigma).")
  flags.DEFINE_integer("ref_num", 0, "fid: images of the reference split (0: all of it).")
  flags.DEFINE_string("save_stats", None, "fid: also write the scored images' statistics "
                      "(mu, sigma) here, to use later as --ref.")
  flags.DEFINE_string("inception", None, "fid: converted FID Inception weights (default: "
                      f"CACHE/{inception.WEIGHTS_NAME}).")
  flags.DEFINE_string("out", None, "Also write the JSON result here (export: the folder).")


def _emit(result: dict) -> None:
  text = json.dumps(result, indent=2)
  print(text, flush=True)
  if FLAGS.out:
    cli.write_text(FLAGS.out, text + "\n")


def _num(command: str) -> int:
  return FLAGS.num if FLAGS.num is not None else (FID_NUM if command == "fid" else 1000)


def _check_flags(command: str) -> None:
  if FLAGS.batch is not None and FLAGS.batch < 1:
    raise UserError(f"--batch={FLAGS.batch} must be positive")
  if FLAGS.fid_batch < 1:
    raise UserError(f"--fid_batch={FLAGS.fid_batch} must be positive")
  if _num(command) < 2:
    raise UserError(f"--num={_num(command)} must be at least 2")
  if FLAGS.steps is not None and FLAGS.steps < 0:
    raise UserError(f"--steps={FLAGS.steps} must be >= 0")
  if FLAGS.eval_every < 0 or (FLAGS.eval_every and (FLAGS.steps or 0) < FLAGS.eval_every):
    raise UserError("--eval_every must be >= 0, and with it --steps >= --eval_every")
  if command == "classifier" and FLAGS.classifier_steps < 1:
    raise UserError("--classifier_steps must be >= 1")
  if command == "fid":
    if bool(FLAGS.samples) == bool(FLAGS.workdir):
      raise UserError("fid: give --workdir (samples drawn from its EMA parameters) or "
                      "--samples=FILE.npz|train|test, not both")
    if FLAGS.samples in ("train", "test") or (FLAGS.samples and FLAGS.ref in ("train", "test")):
      if not FLAGS.data:
        raise UserError(f"fid: --samples={FLAGS.samples} --ref={FLAGS.ref} needs --data "
                        "(the dataset)")
    if FLAGS.ref_num < 0:
      raise UserError(f"--ref_num={FLAGS.ref_num} must be >= 0 (0: the whole split)")
  elif command != "classifier" and not FLAGS.workdir:
    raise UserError("--workdir is required")
  if command == "likelihood":
    likelihood.check_settings(FLAGS.chains, FLAGS.temperatures, FLAGS.ais_step_size,
                              FLAGS.leapfrog_steps, FLAGS.temperature)
  if command == "ood":  # every set readable before any model work
    ood.check_sets(list(FLAGS.ood))


def run(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise UserError(f"give one command: {' | '.join(COMMANDS)} "
                    f"(got {' '.join(argv[1:]) or 'none'})")
  command = argv[1]
  _check_flags(command)
  cache_dir = FLAGS.cache_dir or files.cache_dir()
  num = _num(command)
  if command == "fid":
    return _emit(_fid(num, cache_dir))
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
    result = likelihood.evaluate(
        trained, num=num, chains=FLAGS.chains, sampler=FLAGS.sampler,
        temperatures=FLAGS.temperatures, step_size=FLAGS.ais_step_size, seed=FLAGS.seed,
        leapfrog_steps=FLAGS.leapfrog_steps, temperature=FLAGS.temperature)
  elif command == "accuracy":
    result = jem.accuracy(trained, num, seed=FLAGS.seed)
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
    x = quality.generate_samples(trained, num, steps=FLAGS.steps, seed=FLAGS.seed,
                                 batch_size=FLAGS.batch)
    images.export_samples(x, out)
    print(f"wrote {len(x)} PNG files and samples.npz to {out}")
    return None
  _emit({**head, **result})
  return None


def _fid_data():
  """--data (with --data_path, --image_size, --channels) as data settings: the offline sets at
  their native size unless given, a tfds set at the --image_size and --channels given."""
  if FLAGS.data in features.DATASETS:
    return features.data_config(FLAGS.data, FLAGS.data_path, FLAGS.image_size, FLAGS.channels)
  if not (FLAGS.image_size and FLAGS.channels):
    raise UserError(f"fid: --data={FLAGS.data} needs --image_size and --channels (the size the "
                    "samples were generated at)")
  from ebm_jax.configs import default  # pylint: disable=import-outside-toplevel
  from ebm_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  return data_lib.as_settings(default.get_config().data, name=FLAGS.data, path=FLAGS.data_path,
                              image_size=FLAGS.image_size, channels=FLAGS.channels)


def _fid(num: int, cache_dir: str) -> dict:
  """`evaluate fid`: FID and Inception Score of samples (drawn from --workdir, or --samples)
  against --ref, with progress lines."""
  net = fid.load_network(cache_dir, FLAGS.inception, batch=FLAGS.fid_batch)
  log = lambda s: print(s, flush=True)  # noqa: E731
  head: dict = {"command": "fid"}
  if FLAGS.workdir:
    trained = cli.apply_chain_flags(restore.load(FLAGS.workdir, FLAGS.step))
    data = trained.settings.data
    start = time.time()
    images = quality.generate_samples(trained, num, steps=FLAGS.steps, seed=FLAGS.seed,
                                      batch_size=FLAGS.batch)
    head.update(workdir=FLAGS.workdir, step=trained.step, sampling_s=round(time.time() - start))
  else:
    data = _fid_data() if FLAGS.data else None
    images = (fid.real_images(data, FLAGS.samples, num) if FLAGS.samples in ("train", "test")
              else fid.load_images(FLAGS.samples))[:num]
    head["samples"] = FLAGS.samples
  start = time.time()
  ours = fid.statistics(net.features(images, log=log, what="samples"), log=log)
  if FLAGS.save_stats:
    fid.save_stats(FLAGS.save_stats, ours)
  if FLAGS.ref in ("train", "test"):
    ref = fid.reference_stats(net, data, FLAGS.ref, FLAGS.ref_num, cache_dir, log=log)
  elif FLAGS.ref.endswith(".npz") and os.path.exists(FLAGS.ref):
    with np.load(FLAGS.ref) as f:
      is_stats = "mu" in f.files
    ref = (fid.load_stats(FLAGS.ref) if is_stats else
           fid.statistics(net.features(fid.load_images(FLAGS.ref), log=log,
                                       what="reference"), log=log))
  else:
    raise UserError(f"--ref={FLAGS.ref}: train, test, or an existing .npz file")
  result = {**head, "ref": FLAGS.ref, "fid": fid.fid(ours, ref), "num_samples": ours.num,
            "num_ref": ref.num, "features_s": round(time.time() - start)}
  return result


def main(argv) -> None:
  cli.run_guarded(lambda: run(argv))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
