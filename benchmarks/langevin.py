"""Times the training-time Langevin chain alone (K steps on B chains, no loss, no update) for a
config; prints one JSON object.

  python -m benchmarks.langevin --config=configs/cifar10.py \
      --config.train.batch_size=32 --config.langevin.num_steps=40 [--config.langevin.unroll=1]

One Langevin step is one forward and one input-gradient pass of the energy net over the batch,
the sampler's whole cost, which dominates a training iteration (reference description §6).
Compilation is timed apart; run it on an otherwise idle machine.
"""

import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from ebm_jax import chain_program, langevin, sharding, step, train

FLAGS = flags.FLAGS
common.define_flags()


def run() -> dict:
  config = cli.load_config_flag()
  setup = train.Setup(config)
  state = setup.init_state()
  lc = setup.settings.langevin
  unroll = chain_program.policy(lc.num_steps, lc.unroll, 0).unroll
  b, k = config.train.batch_size, lc.num_steps
  energy = step.energy_fn(setup.model)
  num_classes = setup.info.num_classes
  y = jnp.zeros((b, num_classes), jnp.float32).at[:, 0].set(1.0) if num_classes else None

  def make_chain(num_steps, unroll):
    def chain(params, model_state, key, x0):
      kernel = langevin.kernel(lambda x: energy(params, model_state, x, y), lc)
      final, infos = langevin.run_chain(kernel, key, x0, num_steps, lc.noise_scale,
                                        lc.anneal_noise, unroll=unroll)
      return final.x, infos.grad_norm[-1].mean()
    return chain

  # The chains split over the batch axis of the mesh, as in the train step.
  x0 = jax.device_put(jax.random.uniform(jax.random.key(1), (b,) + tuple(setup.info.shape)),
                      sharding.batch_sharded(setup.mesh))
  if y is not None:
    y = jax.device_put(y, sharding.batch_sharded(setup.mesh))
  args = (state.params, state.model_state, jax.random.key(2), x0)
  t = time.perf_counter()
  compiled = jax.jit(make_chain(k, unroll)).lower(*args).compile()
  compile_s = time.perf_counter() - t
  first_s, times = common.timed(lambda: compiled(*args), FLAGS.repeats, FLAGS.warmup)
  med = common.summary(times)["median"]
  flops = common.flops_linear_in_k(
      lambda k_small: common.flops_of(jax.jit(make_chain(k_small, k_small)).lower(*args)
                                      .compile()), k, unroll, compiled)
  peak = common.peak_tflops(config.model.dtype)
  achieved = flops / med / 1e12
  return {
      "benchmark": "langevin", "config": common.config_name(), "data": config.data.name,
      "model": config.model.name,
      "features": config.model.features, "multiscale": config.model.multiscale,
      "attention": config.model.attention, "batch_size": b, "langevin_steps": k,
      "langevin_unroll": unroll, "precision": config.model.dtype,
      "compile_s": compile_s, "first_call_after_compile_s": first_s,
      "chain_s": common.summary(times), "langevin_steps_per_s": k / med,
      "seconds_per_langevin_step": med / k, "flops_per_chain": flops,
      "achieved_tflops": achieved, "peak_tflops": peak,
      "mfu": achieved / peak if peak else None,
      **common.device_info(), **common.memory_info(), "versions": common.versions(),
  }


def main(argv) -> None:
  del argv
  cli.run_guarded(lambda: common.emit(run(), FLAGS.out), compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
