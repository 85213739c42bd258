"""Accelerator readiness without an accelerator: the training step of a config exported for
GPU and TPU with `jax.export`, checked for host callbacks, with per-device memory from XLA's
analysis of the CPU compile and an estimate of the time per iteration; prints one JSON object.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.export \
      --config=configs/celebahq.py --mock_data --mfu=0.3 --out=benchmarks/results/export_celebahq.json

- **Export**: `jax.export.export(step, platforms=("cuda", "tpu"))` lowers the jitted, sharded
  step (over this process's devices: force 8 host devices for an 8-device mesh) to StableHLO for
  both platforms. The custom calls left in the module are listed; a host callback
  (`*callback*`) or another CPU-only target fails the check.
- **Memory**: the step compiled for the CPU devices at the config's global batch, with the chain
  as a rolled loop (the GPU/TPU default, `langevin.unroll` = 0); XLA's memory analysis gives the
  per-device argument, output and temporary (activation) bytes. A GPU/TPU compile lays memory out
  differently: the figure is an estimate, compared with 80 GB (H100) and 30 GB of a 32 GB
  device (V100 / TPU v4: 2 GB left to the runtime).
- **FLOP check** (`--flop_check`, more than one device): the per-device program's FLOPs on all
  devices against one device's at the same per-device batch; a ratio above 1 is work the
  partitioner replicates on every device.
- **Time**: FLOPs of the step (compiled at K = 1 and K = 2 unrolled on a small batch, affine in
  K and linear in the batch) divided by the peak of 8 H100s (bfloat16 / TF32) times `--mfu`.
"""

import copy
import re
import time

from ebm_jax import cli  # first: nothing above this line may import jax
cli.apply_xla_flags()  # XLA reads the flags' log level when jax loads, not later

import jax
from absl import app, flags

from benchmarks import common
from ebm_jax import chain_program, train

FLAGS = flags.FLAGS
common.define_flags()
flags.DEFINE_list("platforms", ["cuda", "tpu"], "Platforms to export for.")
flags.DEFINE_float("mfu", 0.3, "Model FLOP utilisation assumed for the time estimate.")
flags.DEFINE_bool("memory", True, "Also compile at the global batch for the memory analysis.")
flags.DEFINE_bool("mock_data", False, "Read tfds datasets' metadata under "
                  "tfds.testing.mock_data (no download; only shapes are needed here).")
flags.DEFINE_bool("estimate", True, "Also count the step's FLOPs for the time estimate.")
flags.DEFINE_bool("flop_check", True, "Also compare the step's FLOPs per device on all "
                  "devices with one device's at the same per-device batch (K = 1).")

CPU_ONLY = re.compile(r"callback|cpu", re.IGNORECASE)
# what a step may take of each device: 2 GB of a 32 GB device left to the runtime and framework
BUDGET_GB = {"H100 (80 GB)": 80.0, "V100 / TPU v4 (32 GB)": 30.0}


def abstract_args(setup: train.Setup):
  """(state, batch) as ShapeDtypeStructs carrying the step's shardings: nothing is allocated."""
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       setup.abstract_state, setup.state_sharding)
  b, shape, nc = setup.config.train.batch_size, setup.info.shape, setup.info.num_classes
  image_dtype = "uint8" if len(shape) == 3 else "float32"  # ebm_jax/data: levels, or 2-D points
  batch = {"image": jax.ShapeDtypeStruct((b, *shape), image_dtype,
                                         sharding=setup.batch_sharding["image"]),
           "label": jax.ShapeDtypeStruct((b, nc), "float32",
                                         sharding=setup.batch_sharding["label"])}
  return state, batch


def custom_calls(module_text: str) -> tuple[list[str], list[str]]:
  """(every custom-call target in a StableHLO module, those that only run on a CPU host)."""
  targets = sorted(set(re.findall(r"stablehlo\.custom_call @([\w.$-]+)", module_text)) |
                   set(re.findall(r'call_target_name = "([^"]+)"', module_text)))
  return targets, [t for t in targets if CPU_ONLY.search(t)]


def export_step(setup: train.Setup, platforms) -> dict:
  """Exports the step for `platforms`; returns the custom-call targets and the check."""
  exported = jax.export.export(setup.step_fn, platforms=tuple(platforms))(*abstract_args(setup))
  text = exported.mlir_module()
  targets, bad = custom_calls(text)
  return {"platforms": list(exported.platforms), "nr_devices": exported.nr_devices,
          "custom_calls": targets, "cpu_only_calls": bad, "exportable": not bad,
          "stablehlo_bytes": len(text)}


def step_flops(config, k: int) -> float:
  """FLOPs of one step at the config's global batch, from two small unrolled compiles."""
  small = copy.deepcopy(config)
  per_device = 2
  small.train.batch_size = per_device * jax.device_count()

  def flops_for_k(k_small):
    setup = train.Setup(common.with_chain_length(small, k_small))
    return common.flops_of(chain_program.compile(setup.step_fn, *abstract_args(setup)))

  flops = common.flops_linear_in_k(flops_for_k, k, unroll=1)
  return flops * config.train.batch_size / small.train.batch_size


def flops_per_device(config, devices, per_device: int = 2) -> float:
  """XLA's FLOP count of the step's per-device program (K = 1, unrolled) on `devices` at
  `per_device` rows per device: the partitioned program's own count, not scaled."""
  small = common.with_chain_length(config, 1)
  small.train.batch_size = per_device * len(devices)
  if small.loss.kl_samples:  # the config's share of KL rows, at least one per device
    share = config.loss.kl_samples / config.train.batch_size
    small.loss.kl_samples = max(1, round(share * per_device)) * len(devices)
  setup = train.Setup(small, devices)
  compiled = chain_program.compile(setup.step_fn, *abstract_args(setup))
  return common.flops_of(compiled) / len(devices)


def flop_check(config, per_device: int = 2) -> dict:
  """The step's FLOPs per device on every device of this process against one device at the
  same per-device batch: a ratio above 1 is work the partitioner replicates on every device."""
  devices = jax.devices()
  one = flops_per_device(config, devices[:1], per_device)
  many = flops_per_device(config, devices, per_device)
  return {"devices": len(devices), "per_device_batch": per_device, "flops_one_device": one,
          "flops_per_device": many, "ratio": many / one}


def memory(setup: train.Setup) -> dict:
  t0 = time.perf_counter()
  compiled = chain_program.compile(setup.step_fn, *abstract_args(setup))
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  gb = lambda n: n / 1e9
  per_device = {"argument_gb": gb(m.argument_size_in_bytes), "output_gb": gb(m.output_size_in_bytes),
                "temp_gb": gb(m.temp_size_in_bytes),
                "alias_gb": gb(m.alias_size_in_bytes)}
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  per_device["total_gb"] = gb(total)
  per_device["cpu_compile_s"] = compile_s  # lower + compile for the host devices
  per_device["fits"] = {name: gb(total) < cap for name, cap in BUDGET_GB.items()}
  return per_device


def run() -> dict:
  config = cli.load_config_flag()
  config.langevin.unroll = 0  # auto; the rolled chain of GPU/TPU is asked for below
  config.langevin.host_segment = 0  # GPU/TPU run the chain inside the one step program
  gpu_like = copy.deepcopy(config)
  gpu_like.langevin.unroll = 1
  setup = train.Setup(gpu_like)
  k, b = config.langevin.num_steps, config.train.batch_size
  out = {"benchmark": "export", "config": common.config_name(), "batch_size": b,
         "langevin_steps": k, "precision": config.model.dtype, "mesh_devices": setup.mesh.size,
         "export": export_step(setup, FLAGS.platforms)}
  if FLAGS.memory:
    out["memory_per_device_estimate"] = memory(setup)
  if FLAGS.flop_check and setup.mesh.size > 1:
    out["flop_check"] = flop_check(config)
  if not FLAGS.estimate:
    return {**out, **common.device_info(), "versions": common.versions()}
  flops = step_flops(config, k)
  peak = common.PEAK_TFLOPS["H100"]["bfloat16" if config.model.dtype == "bfloat16" else "float32"]
  out["flops_per_step"] = flops
  out["estimate"] = {
      "assumed_mfu": FLAGS.mfu, "devices": "8x H100", "peak_tflops_per_device": peak,
      "step_s": flops / (8 * peak * 1e12 * FLAGS.mfu), "note": "estimate, not a measurement"}
  return {**out, **common.device_info(), "versions": common.versions()}


def main(argv) -> None:
  del argv

  def go():
    if FLAGS.mock_data:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      with tfds.testing.mock_data(num_examples=16):
        return common.emit(run(), FLAGS.out)
    return common.emit(run(), FLAGS.out)

  cli.run_guarded(go, compilation_cache=False)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
