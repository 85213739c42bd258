"""Times one segment of the test-time chain (`--steps` Langevin steps on `--num` chains from
uniform noise, the energy net of a config at its initial parameters) compiled rolled
(`lax.scan`, unroll 1) and unrolled, as `ebm_jax/sampling.py` runs it; prints one JSON object.

  python -m benchmarks.sampler --config=configs/fashion_mnist.py:cpu --num=256 --steps=20 \
      [--unrolls=1,20 --repeats=3]

The sampler runs its chain as segments of `sample.block_steps` unrolled steps because XLA:CPU
runs the body of a while loop far slower than straight-line code (benchmarks/README.md).
Compilation is timed apart; run it on an otherwise idle machine.
"""

import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
from absl import app, flags

from benchmarks import common
from ebm_jax import langevin, models, sampling

FLAGS = flags.FLAGS
common.define_flags()
flags.DEFINE_integer("num", 256, "Chains (one batch).")
flags.DEFINE_integer("steps", 20, "Langevin steps of the timed segment.")
flags.DEFINE_list("unrolls", ["1", "20"], "Unroll factors to time (steps per loop iteration).")


def run() -> dict:
  config = cli.load_config_flag()
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  model = models.make_model(config.model, shape, 0)
  variables = model.init(jax.random.key(0), jax.numpy.zeros((1,) + shape))
  settings = sampling.settings_from_config(config)
  x0 = jax.random.uniform(jax.random.key(1), (FLAGS.num,) + shape)
  rows = {}
  for unroll in [int(u) for u in FLAGS.unrolls]:
    def segment(v, x, unroll=unroll):
      kernel = langevin.kernel(lambda z: model.apply(v, z), settings.chain)
      return langevin.run_chain(kernel, jax.random.key(2), x, FLAGS.steps,
                                settings.chain.noise_scale, unroll=unroll)[0].x
    t = time.perf_counter()
    compiled = jax.jit(segment).lower(variables, x0).compile()
    compile_s = time.perf_counter() - t
    first_s, times = common.timed(lambda: compiled(variables, x0), FLAGS.repeats, FLAGS.warmup)
    rows[str(unroll)] = {"compile_s": compile_s, "first_call_after_compile_s": first_s,
                         "segment_s": common.summary(times),
                         "seconds_per_langevin_step": common.summary(times)["median"]
                                                      / FLAGS.steps}
  return {"benchmark": "sampler", "config": common.config_name(), "model": config.model.name,
          "features": config.model.features, "image_shape": list(shape), "chains": FLAGS.num,
          "segment_steps": FLAGS.steps, "by_unroll": rows, **common.device_info(),
          **common.memory_info(), "versions": common.versions()}


def main(argv) -> None:
  del argv
  cli.run_guarded(lambda: common.emit(run(), FLAGS.out), compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
