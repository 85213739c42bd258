"""bfloat16 against float32 for a config's net, on the same parameters and inputs: what the
sampler sees (E and ∇ₓE) and what one Langevin step's work costs; prints one JSON object.

  python -m benchmarks.precision --config=configs/cifar10.py --config.data.name=shapes \
      --config.train.batch_size=32 [--out=benchmarks/results/cpu_precision_cifar10.json]

- **Error**: the energy net under `model.dtype=bfloat16` (parameters float32, the compute in
  bfloat16, energies and input gradients returned in float32) against the float32 net, on
  `train.batch_size` inputs of two kinds: uniform noise (where test-time chains start) and
  training images (where they end). Reported: |ΔE| over the float32 energies' standard
  deviation across the batch (median and max), and for ∇ₓE the relative L2 error per example
  ‖g₁₆ − g₃₂‖ / ‖g₃₂‖ (median, max) and the cosine between them (min). A Langevin step moves x
  by λ∇ₓE, so the relative gradient error is the relative error of the step's drift.
- **Time**: one jitted forward + input-gradient pass over the batch per precision (the unit of
  a Langevin step), compilation apart, median of `--repeats` calls; run on an idle machine.
"""

import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from ebm_jax import models, step, train

FLAGS = flags.FLAGS
common.define_flags()


def _stats(e32, e16, g32, g16) -> dict:
  e32, e16 = np.asarray(e32, np.float64), np.asarray(e16, np.float64)
  g32 = np.asarray(g32, np.float64).reshape(len(g32), -1)
  g16 = np.asarray(g16, np.float64).reshape(len(g16), -1)
  scale = max(float(e32.std()), 1e-12)
  de = np.abs(e16 - e32).reshape(-1) / scale
  rel = np.linalg.norm(g16 - g32, axis=1) / np.maximum(np.linalg.norm(g32, axis=1), 1e-30)
  cos = np.sum(g16 * g32, axis=1) / np.maximum(
      np.linalg.norm(g16, axis=1) * np.linalg.norm(g32, axis=1), 1e-30)
  return {"energy_abs_err_over_std": {"median": float(np.median(de)), "max": float(de.max())},
          "energy_std_float32": scale,
          "grad_rel_l2_err": {"median": float(np.median(rel)), "max": float(rel.max())},
          "grad_cosine_min": float(cos.min())}


def run() -> dict:
  config = cli.load_config_flag()
  setup = train.Setup(config)
  state = setup.init_state()
  variables = {"params": state.params, **state.model_state}
  shape, b, nc = tuple(setup.info.shape), config.train.batch_size, setup.info.num_classes
  y = jnp.zeros((b, nc), jnp.float32).at[:, 0].set(1.0) if nc else None
  nets, fns = {}, {}
  for dtype in ("float32", "bfloat16"):
    mc = config.model.copy_and_resolve_references()
    mc.dtype = dtype
    nets[dtype] = models.make_model(mc, shape, num_classes=nc)

    def energy_and_grad(x, net=nets[dtype]):
      def total(z):
        e = net.apply(variables, z, y)
        return e.sum(), e
      (_, e), g = jax.value_and_grad(total, has_aux=True)(x)
      return e, g
    fns[dtype] = jax.jit(energy_and_grad)

  noise = jax.random.uniform(jax.random.key(0), (b,) + shape)
  data = setup.global_batch(next(setup.stream(0)))["image"]
  data = step.dequantize(jax.random.key(3), data, setup.info.levels)  # as the train step does
  out = {"benchmark": "precision", "config": common.config_name(), "data": config.data.name,
         "model": config.model.name, "features": config.model.features,
         "multiscale": config.model.multiscale, "attention": config.model.attention,
         "batch_size": b, "error": {}, "forward_and_input_grad_s": {}, "compile_s": {}}
  compiled = {}
  for dtype, fn in fns.items():  # compiled first, so that compile_s is the compilation
    t = time.perf_counter()
    compiled[dtype] = fn.lower(noise).compile()
    out["compile_s"][dtype] = time.perf_counter() - t
  for name, x in (("uniform_noise", noise), ("training_images", data)):
    (e32, g32), (e16, g16) = compiled["float32"](x), compiled["bfloat16"](x)
    out["error"][name] = _stats(e32, e16, g32, g16)
  for dtype, c in compiled.items():
    _, times = common.timed(lambda c=c: c(noise), FLAGS.repeats, FLAGS.warmup)
    out["forward_and_input_grad_s"][dtype] = common.summary(times)
  out["bfloat16_speedup"] = (out["forward_and_input_grad_s"]["float32"]["median"]
                             / out["forward_and_input_grad_s"]["bfloat16"]["median"])
  return {**out, **common.device_info(), **common.memory_info(), "versions": common.versions()}


def main(argv) -> None:
  del argv
  cli.run_guarded(lambda: common.emit(run(), FLAGS.out), compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
