"""Times what one FID evaluation costs: the FID network's images/s at several batch sizes, and
the test-time sampler's chains/s at several batch sizes (a config's net at its initial
parameters and its whole test-time chain); prints one JSON object.

  python -m benchmarks.fid --config=configs/fashion_mnist.py:cpu [--fid_batches=25,50,100]
      [--chain_batches=32,64,128,256 --images=200 --repeats=3]

Neither speed depends on the values of the weights: without converted FID weights in the cache
folder the network runs with random ones (said in the output). Compilation is timed apart (the
first call); run it on an otherwise idle machine.
"""

import os

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from ebm_jax import files, models, sampling
from ebm_jax.eval import fid, inception
from ebm_jax.settings import Settings

FLAGS = flags.FLAGS
common.define_flags()
flags.DEFINE_list("fid_batches", ["25", "50", "100"], "Images per FID-network call to time.")
flags.DEFINE_list("chain_batches", ["32", "64", "128", "256"], "Chains per sampler call.")
flags.DEFINE_integer("images", 200, "Images per timed FID-network pass.")


def _params() -> tuple[dict, str]:
  path = inception.default_weights_path(files.cache_dir())
  if os.path.exists(path):
    return inception.load_params(path), "converted"
  shapes = jax.eval_shape(lambda: inception.InceptionV3().init(
      jax.random.key(0), jnp.zeros((1, inception.SIZE, inception.SIZE, 3))))["params"]
  rng = np.random.default_rng(0)
  return (jax.tree.map(lambda s: (1.0 + 0.01 * rng.normal(size=s.shape)).astype(np.float32),
                       shapes), "random (no converted weights in the cache folder)")


def run() -> dict:
  config = cli.load_config_flag()
  settings = Settings.from_config(config)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  params, weights = _params()
  images = np.random.default_rng(0).integers(0, 256, (FLAGS.images,) + shape).astype(np.uint8)
  network_rows = {}
  for b in [int(v) for v in FLAGS.fid_batches]:
    net = fid.Network(params, batch=b)
    first, _ = common.timed(lambda net=net, b=b: net.features(images[:b]), 0, 0)
    _, times = common.timed(lambda net=net: net.features(images), FLAGS.repeats, 0)
    med = common.summary(times)["median"]
    network_rows[str(b)] = {"first_call_s": first, "pass_s": common.summary(times),
                            "images_per_s": FLAGS.images / med}
  model = models.make_model(config.model, shape, 0)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
  chain_rows = {}
  for b in [int(v) for v in FLAGS.chain_batches]:
    sampler = sampling.for_model(settings, model, shape, batch_size=b)
    key = jax.random.key(1)
    draw = lambda sampler=sampler, b=b: sampler.draw(key, b, None, variables)[0]  # noqa: E731
    first, times = common.timed(draw, FLAGS.repeats, FLAGS.warmup)
    med = common.summary(times)["median"]
    chain_rows[str(b)] = {"first_call_s": first, "call_s": common.summary(times),
                          "chains_per_s": b / med,
                          "langevin_steps": sampling.settings_from_config(settings).num_steps}
  best_net = max(network_rows, key=lambda k: network_rows[k]["images_per_s"])
  best_chain = max(chain_rows, key=lambda k: chain_rows[k]["chains_per_s"])
  n = 10_000
  return {"benchmark": "fid", **common.device_info(), **common.memory_info(),
          "versions": common.versions(), "config": common.config_name(),
          "fid_weights": weights, "image_shape": list(shape), "fid_network": network_rows,
          "sampler": chain_rows,
          "estimate_10k_s": {"sampling": n / chain_rows[best_chain]["chains_per_s"],
                             "features": n / network_rows[best_net]["images_per_s"],
                             "best_fid_batch": int(best_net), "best_chain_batch": int(best_chain)}}


def main(argv) -> None:
  del argv
  cli.run_guarded(lambda: common.emit(run(), FLAGS.out), compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
