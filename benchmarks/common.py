"""Shared pieces of the benchmark scripts: config loading, timing, cost analysis, JSON."""

import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable

import jax
from absl import flags
from ml_collections import config_flags

from ebm_jax import cli

# Dense peak TFLOP/s (no sparsity) per device, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 494.0},  # SXM; float32 = TF32 tensor cores
    "H200": {"bfloat16": 989.0, "float32": 494.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},  # v5e
}


def define_flags() -> None:
  """--config (with --config.FIELD=VALUE overrides: train.batch_size, langevin.num_steps,
  model.dtype for precision, ...), --repeats, --warmup, --out."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar10.py[:tiny]",
                                  lock_config=True)
  flags.DEFINE_integer("repeats", 5, "Timed calls; the median is reported.")
  flags.DEFINE_integer("warmup", 1, "Untimed calls after the compiling one.")
  flags.DEFINE_string("out", "", "Also write the JSON to this file.")
  cli.define_common_flags(workdir=False)
  flags.mark_flags_as_required(["config"])


def setup_from_flag():
  """(config of --config, its train.Setup, the initial state, the first batch)."""
  from ebm_jax import train  # pylint: disable=import-outside-toplevel
  config = cli.load_config_flag()
  setup = train.Setup(config)
  return config, setup, setup.init_state(), setup.global_batch(next(setup.stream(0)))


def compile_from_flag(pick: Callable[[Any], Any]):
  """setup_from_flag's (config, setup, state, batch), with the program `pick(setup)` compiled
  ahead of time on them and its compile seconds: (config, setup, state, batch, compiled, s)."""
  from ebm_jax import chain_program  # pylint: disable=import-outside-toplevel
  config, setup, state, batch = setup_from_flag()
  t = time.perf_counter()
  compiled = chain_program.compile(pick(setup), state, batch)
  return config, setup, state, batch, compiled, time.perf_counter() - t


def config_name() -> str:
  """The --config argument as given (file and variant)."""
  flag = flags.FLAGS["config"]
  return getattr(flag, "config_filename", "") or str(flag.value.data.name)


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, list[float]]:
  """(first-call seconds, incl. compilation; list of timed-call seconds)."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return first, times


def flops_of(compiled) -> float:
  """FLOPs of one call on all devices from XLA's cost analysis (nan where the backend gives
  none). The analysis is of the partitioned per-device program (measured: the digits step on 2
  host devices reports half the FLOPs of the 1-device step), so it is scaled by the number of
  devices the program runs on."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan"))) * _num_devices(compiled)


def _num_devices(compiled) -> int:
  shardings = [s for s in jax.tree.leaves(compiled.input_shardings) if hasattr(s, "device_set")]
  return max((len(s.device_set) for s in shardings), default=1)


def flops_linear_in_k(flops_for_k: Callable[[int], float], k: int, unroll: int,
                      compiled=None) -> float:
  """FLOPs of a computation whose cost is affine in the chain length K.

  XLA's cost analysis counts the body of a while loop once, whatever its trip count, so a chain
  under `lax.scan` reports the FLOPs of a single Langevin step (measured here: 1.2e11 FLOPs for
  a Fashion-MNIST step that does about 1e12). Unless the chain is fully unrolled, this compiles
  the computation at K = 1 and K = 2 with the chain unrolled and extrapolates f(1) + (K-1)·Δ.
  `flops_for_k(k)` must compile the computation with K = k, unrolled, and return its FLOPs;
  `compiled`, the computation already compiled at K, is used as is when its chain is unrolled.
  """
  if unroll >= k:
    return flops_of(compiled) if compiled is not None else flops_for_k(k)
  f1, f2 = flops_for_k(1), flops_for_k(2)
  return f1 + (k - 1) * (f2 - f1)


def with_chain_length(config, k: int):
  """A copy of config whose Langevin chain has k steps, fully unrolled, and whose loss is taken
  in one chunk: XLA counts a loop body once, and loss.chunks changes no FLOPs (the same rows
  through the same net), so the FLOP count is of the unchunked program."""
  c = copy.deepcopy(config)
  c.langevin.num_steps = k
  c.langevin.unroll = k
  c.loss.chunks = 1
  return c


def cpu_model() -> dict[str, Any]:
  """The host CPU's model name and whether it has AMX bf16 units (Linux /proc/cpuinfo): CPU
  timings are comparable only between machines of one model (this project's 2-core machines
  have been an Intel CPU with AMX and an AMD EPYC)."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return {"cpu_model": platform.processor() or "unknown", "cpu_amx_bf16": None}
  names = [line.split(":", 1)[1].strip() for line in text.splitlines()
           if line.startswith("model name")]
  return {"cpu_model": names[0] if names else "unknown", "cpu_amx_bf16": "amx_bf16" in text}


def device_info() -> dict[str, Any]:
  d = jax.devices()[0]
  return {"device_kind": d.device_kind, "platform": d.platform, "device_count": jax.device_count(),
          "process_count": jax.process_count(), "cpu_count": os.cpu_count(), **cpu_model(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def peak_tflops(precision: str) -> float | None:
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return peaks[precision] * jax.device_count()
  return None


def memory_info() -> dict[str, Any]:
  out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    out["peak_device_memory_mib"] = stats["peak_bytes_in_use"] / 2**20
  return out


def versions() -> dict[str, str]:
  import flax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "python": sys.version.split()[0]}


def summary(times: list[float]) -> dict[str, float]:
  return {"median": statistics.median(times), "min": min(times), "max": max(times),
          "n": len(times)}


def emit(result: dict[str, Any], out: str) -> None:
  text = json.dumps(result, indent=2, sort_keys=True)
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text + "\n")
