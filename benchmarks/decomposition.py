"""Times the gradient decomposition (ebm_jax.analysis, the paper's Fig. 12) of a config: its
compilation apart, then calls; prints one JSON object.

  python -m benchmarks.decomposition --config=configs/cifar10.py --config.data.name=shapes \
      --config.train.batch_size=16 --config.langevin.num_steps=40 [--config.langevin.host_segment=0]

The decomposition is built by the training step's builder (`chain_program.build`), so on CPU a
long chain runs host-driven; `--config.langevin.host_segment=0` builds it with the chain inside
one program (fully unrolled on CPU), the form it had before it shared the builder. Run it on an
otherwise idle machine.
"""

import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from ebm_jax import chain_program

FLAGS = flags.FLAGS
common.define_flags()


def run() -> dict:
  config, setup, state, batch = common.setup_from_flag()
  t = time.perf_counter()
  compiled = chain_program.compile(setup.decompose_fn, state, batch)
  compile_s = time.perf_counter() - t
  first_s, times = common.timed(lambda: compiled(state, batch), FLAGS.repeats, FLAGS.warmup)
  out = jax.device_get(compiled(state, batch))
  return {
      "benchmark": "decomposition", "config": common.config_name(), "data": config.data.name,
      "model": config.model.name, "batch_size": config.train.batch_size,
      "langevin_steps": config.langevin.num_steps,
      "langevin_host_segment": setup.decompose_fn.lengths[0]
      if isinstance(setup.decompose_fn, chain_program.HostChain) else 0,
      "compile_s": compile_s, "first_call_after_compile_s": first_s,
      "call_s": common.summary(times),
      "finite": bool(all(np.isfinite(v) for v in out.values())),
      **common.device_info(), **common.memory_info(), "versions": common.versions(),
  }


def main(argv) -> None:
  del argv
  cli.run_guarded(lambda: common.emit(run(), FLAGS.out), compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
