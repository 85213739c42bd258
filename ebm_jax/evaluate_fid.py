"""`python -m ebm_jax.evaluate fid`: the flags and the command line of the standard FID, over
ebm_jax/eval/fid.py (evaluate.py dispatches here; run through it, not on its own).

  python -m ebm_jax.evaluate fid --workdir=runs/fm_cpu [--num=10000 --batch=128]
  python -m ebm_jax.evaluate fid --samples=gen.npz --data=cifar10 --image_size=32 --channels=3
      --ref=train
  python -m ebm_jax.evaluate fid --samples=train --data=fashion_mnist   # the floor, train vs test
"""

import time

from absl import flags

from ebm_jax import cli, restore
from ebm_jax.errors import UserError
from ebm_jax.eval import fid, inception, quality

FLAGS = flags.FLAGS
NUM = fid.PAPERS_NUM  # --num's default for fid


def define_flags() -> None:
  flags.DEFINE_string("samples", None, "fid: an .npz of images to score (uint8 NHWC or floats "
                      "in [0, 1], under 'images' or 'samples'), or train/test for a split of "
                      "--data; instead of samples drawn from --workdir.")
  flags.DEFINE_string("ref", "test", "fid: the reference, test or train (a split of the run's "
                      "or --data's dataset, statistics cached) or an .npz of images or of "
                      "statistics (mu, sigma).")
  flags.DEFINE_integer("ref_num", 0, "fid: images of the reference split (0: all of it).",
                       lower_bound=0)
  flags.DEFINE_string("save_stats", None, "fid: also write the scored images' statistics "
                      "(mu, sigma) here, to use later as --ref.")
  flags.DEFINE_string("inception", None, "fid: converted FID Inception weights (default: "
                      f"CACHE/{inception.WEIGHTS_NAME}).")
  flags.DEFINE_integer("fid_batch", 50, "fid: images per call of the FID network.",
                       lower_bound=1)


def check_flags() -> None:
  if bool(FLAGS.samples) == bool(FLAGS.workdir):
    raise UserError("fid: give --workdir (samples drawn from its EMA parameters) or "
                    "--samples=FILE.npz|train|test, not both")
  real = ("train", "test")
  if (FLAGS.samples in real or (FLAGS.samples and FLAGS.ref in real)) and not FLAGS.data:
    raise UserError(f"fid: --samples={FLAGS.samples} --ref={FLAGS.ref} needs --data "
                    "(the dataset)")


def run(num: int, cache_dir: str) -> dict:
  """The FID of samples (drawn from --workdir, or --samples) against --ref, with progress
  lines; the papers' protocol is 10,000 or more samples against a whole split."""
  net = fid.load_network(cache_dir, FLAGS.inception, batch=FLAGS.fid_batch)
  log = lambda s: print(s, flush=True)  # noqa: E731
  if FLAGS.workdir:
    trained = cli.apply_chain_flags(restore.load(FLAGS.workdir, FLAGS.step))
    start = time.time()
    images = quality.generate_samples(trained, num, steps=FLAGS.steps, seed=FLAGS.seed,
                                      batch_size=FLAGS.batch)
    head = {"workdir": FLAGS.workdir, "step": trained.step,
            "sampling_s": round(time.time() - start)}
    data, what = trained.settings.data, "samples"
  else:
    data = (fid.data_settings(FLAGS.data, FLAGS.data_path, FLAGS.image_size, FLAGS.channels)
            if FLAGS.data else None)
    images, what = fid.images_of(FLAGS.samples, data, num)
    head = {"samples": FLAGS.samples}
  return {"command": "fid", **head,
          **fid.score(net, images, what=what, data=data, ref=FLAGS.ref, ref_num=FLAGS.ref_num,
                      cache_dir=cache_dir, stats_out=FLAGS.save_stats, log=log)}
