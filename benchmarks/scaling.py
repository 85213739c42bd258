"""Cost scaling of a training iteration; prints one JSON object.

  python -m benchmarks.scaling --config=configs/digits.py --ks=5,10,20 --batches=16,32,64 \
      --kl_samples=8,16,32 --ent_refs=100,1000,4000

Time: the train step is compiled and timed (median of --repeats) for each chain length K at the
config's batch, and for each batch size B at the config's K; the fitted exponents of step time
in K and in B (slopes of log time against log K, log B) are expected near 1 (reference
description §6: (2K + 6)·B + 7n forward-equivalents), below 1 where fixed costs still weigh.

Memory: XLA's memory analysis of the compiled step (temporary bytes) against the number of
KL rows n (`loss.kl_samples`) and the entropy comparison-set size m (`loss.ent_num_refs`), and
of the nearest-neighbour search alone at CIFAR-10's D = 3072, where an n x m x D tensor would
show as temporary bytes growing like n·m·D (n = 128, m = 10000: 15.7 GB).
"""

import copy
import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from ebm_jax import chain_program, config_lib, losses, train

FLAGS = flags.FLAGS
common.define_flags()
flags.DEFINE_list("ks", ["5", "10", "20"], "Chain lengths K to time (at the config's batch).")
flags.DEFINE_list("batches", ["16", "32", "64"], "Batch sizes B to time (at the config's K).")
flags.DEFINE_list("kl_samples", ["8", "16", "32"], "KL rows n for the memory sweep.")
flags.DEFINE_list("ent_refs", ["100", "1000", "4000"], "Entropy comparison-set sizes m.")


def _ints(values: list[str], name: str) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise config_lib.UserError(f"--{name}: expected a comma-separated list of integers, got "
                        f"{','.join(values)!r}") from None
  if len(out) < 2 or min(out) < 1:
    raise config_lib.UserError(f"--{name}: need at least two values, all >= 1")
  return out


def _compiled_step(config):
  setup = train.Setup(config)
  state = setup.init_state()
  batch = setup.global_batch(next(setup.stream(0)))
  t = time.perf_counter()
  compiled = chain_program.compile(setup.step_fn, state, batch)
  return compiled, state, batch, time.perf_counter() - t


def _time_step(config) -> dict:
  compiled, state, batch, compile_s = _compiled_step(config)
  holder = {"state": state}

  def call():
    holder["state"], metrics, _ = compiled(holder["state"], batch)
    return metrics

  _, times = common.timed(call, FLAGS.repeats, FLAGS.warmup)
  return {"compile_s": compile_s, "step_s": common.summary(times),
          "temp_mib": _temp_mib(compiled)}


def _temp_mib(compiled) -> float | None:
  analysis = compiled.memory_analysis()
  return None if analysis is None else analysis.temp_size_in_bytes / 2**20


def _exponent(xs: list[int], ys: list[float]) -> float:
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _with(config, **fields):
  c = copy.deepcopy(config)
  for path, value in fields.items():
    block, name = path.split("__")
    c[block][name] = value
  return c


def nn_search_temp_mib(n: int, m: int, d: int) -> float | None:
  """Temporary memory of the compiled nearest-neighbour distance (value and gradient)."""
  x = jax.ShapeDtypeStruct((n, d), jnp.float32)
  refs = jax.ShapeDtypeStruct((m, d), jnp.float32)
  fn = jax.jit(jax.value_and_grad(lambda a, b: losses.entropy_loss(a, b, 1e-8)))
  return _temp_mib(fn.lower(x, refs).compile())


def run() -> dict:
  config = cli.load_config_flag()
  ks, bs = _ints(FLAGS.ks, "ks"), _ints(FLAGS.batches, "batches")
  ns, ms = _ints(FLAGS.kl_samples, "kl_samples"), _ints(FLAGS.ent_refs, "ent_refs")
  if max(ns) > config.train.batch_size:
    raise config_lib.UserError(
        f"--kl_samples: at most train.batch_size ({config.train.batch_size})")

  by_k = {k: _time_step(_with(config, langevin__num_steps=k)) for k in ks}
  by_b = {b: _time_step(_with(config, train__batch_size=b)) for b in bs}
  med = lambda rows: [r["step_s"]["median"] for r in rows.values()]
  mem_n = {n: _temp_mib(_compiled_step(_with(config, loss__kl_samples=n))[0]) for n in ns}
  mem_m = {}
  for m in ms:
    c = _with(config, loss__ent_num_refs=m)
    c.buffer.capacity = max(c.buffer.capacity, m)
    mem_m[m] = _temp_mib(_compiled_step(c)[0])
  nn = {f"n={n},m={m},D=3072": nn_search_temp_mib(n, m, 3072)
        for n, m in ((128, 1000), (128, 10000), (256, 10000))}
  return {
      "benchmark": "scaling", "data": config.data.name, "model": config.model.name,
      "batch_size": config.train.batch_size, "langevin_steps": config.langevin.num_steps,
      "by_langevin_steps": by_k, "by_batch_size": by_b,
      "time_exponent_in_k": _exponent(ks, med(by_k)),
      "time_exponent_in_batch": _exponent(bs, med(by_b)),
      "step_temp_mib_by_kl_samples": mem_n, "step_temp_mib_by_ent_refs": mem_m,
      "nn_search_temp_mib": nn,
      "nn_search_n_m_d_tensor_mib": {k: int(k.split(",")[0][2:]) * int(k.split(",")[1][2:])
                                     * 3072 * 4 / 2**20 for k in nn},
      **common.device_info(), **common.memory_info(), "versions": common.versions(),
  }


def main(argv) -> None:
  del argv
  cli.run_guarded(lambda: common.emit(run(), FLAGS.out), compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
