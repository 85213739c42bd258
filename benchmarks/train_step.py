"""Times one training iteration (the jitted train step) of a config, or with
`--program=decomposition` its gradient decomposition (ebm_jax/analysis.py, the paper's Fig. 12);
prints one JSON object.

  python -m benchmarks.train_step --config=configs/cifar10.py \
      --config.train.batch_size=16 --config.langevin.num_steps=40 [--config.model.dtype=bfloat16]
  python -m benchmarks.train_step --program=decomposition --config=configs/cifar10.py \
      --config.data.name=shapes --config.train.batch_size=16 --config.langevin.num_steps=40 \
      [--config.langevin.host_segment=0]

Compilation is timed apart (lower + compile); the program is then called `--warmup` times
untimed and `--repeats` times timed with `block_until_ready`, the step threading the donated
state through. Both programs come from the step's builder (`chain_program.build`), so on CPU a
long chain runs host-driven; `--config.langevin.host_segment=0` builds the chain inside one
program (fully unrolled on CPU). Run it on an otherwise idle machine.
"""

import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
import numpy as np
from absl import app, flags

from benchmarks import common
from ebm_jax import chain_program, train

FLAGS = flags.FLAGS
common.define_flags()
flags.DEFINE_enum("program", "step", ["step", "decomposition"], "What to time.")


def run_decomposition() -> dict:
  config, setup, state, batch, compiled, compile_s = common.compile_from_flag(
      lambda setup: setup.decompose_fn)
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


def _phase_times(compiled, holder) -> dict[str, dict[str, float]]:
  """The host-driven step's phases timed apart over FLAGS.repeats more calls, waiting for each
  phase's outputs: "start" (buffer draw, augmentation), "chain" (the K Langevin steps, every
  segment), "finish" (energies, L_KL, L_ent, backward, clip, Adam, EMA, buffer update)."""
  times: dict[str, list[float]] = {"start": [], "chain": [], "finish": []}
  for _ in range(FLAGS.repeats):
    clock = [time.perf_counter()]

    def on_phase(name, out, clock=clock):
      jax.block_until_ready(out)
      now = time.perf_counter()
      times[name].append(now - clock[0])
      clock[0] = now

    holder["state"], _, _ = compiled(holder["state"], holder["batch"], on_phase=on_phase)
  return {name: common.summary(t) for name, t in times.items()}


def run() -> dict:
  if FLAGS.program == "decomposition":
    return run_decomposition()
  config, setup, state, batch, compiled, compile_s = common.compile_from_flag(
      lambda setup: setup.step_fn)
  holder = {"state": state, "batch": batch}

  def call():
    holder["state"], metrics, _ = compiled(holder["state"], batch)
    return metrics

  first_s, times = common.timed(call, FLAGS.repeats, FLAGS.warmup)
  finite = bool(np.asarray(call()["finite"]))
  parts = _phase_times(compiled, holder) if setup.host_segment else None
  b, k = config.train.batch_size, config.langevin.num_steps
  # Host-driven segments are straight-line programs: their cost analysis counts every step.
  unroll = k if setup.host_segment else setup.chain_policy.unroll
  med = float(np.median(times))
  flops = common.flops_linear_in_k(
      lambda k_small: common.flops_of(chain_program.compile(
          train.Setup(common.with_chain_length(config, k_small)).step_fn, state, batch)),
      k, unroll, compiled if config.loss.chunks == 1 else None)  # a chunk loop counts once
  precision = config.model.dtype
  peak = common.peak_tflops(precision)
  achieved = flops / med / 1e12
  return {
      "benchmark": "train_step", "config": common.config_name(),
      "data": config.data.name, "model": config.model.name, "features": config.model.features,
      "multiscale": config.model.multiscale, "attention": config.model.attention,
      "batch_size": b, "langevin_steps": k, "kl_samples": config.loss.kl_samples or b,
      "precision": precision, "langevin_unroll": unroll,
      "langevin_host_segment": setup.host_segment,
      "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
      "compile_s": compile_s, "first_call_after_compile_s": first_s,
      "step_s": common.summary(times), "images_per_s": b / med,
      "langevin_steps_per_s": k / med, "flops_per_step": flops,
      "achieved_tflops": achieved, "peak_tflops": peak,
      "mfu": achieved / peak if peak else None, "loss_finite": finite,
      "parts_s": parts,
      **common.device_info(), **common.memory_info(), "versions": common.versions(),
  }


def main(argv) -> None:
  del argv
  cli.run_guarded(lambda: common.emit(run(), FLAGS.out), compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
