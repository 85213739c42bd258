"""Prints a Markdown table of benchmark JSON files (train_step and langevin results). "first
step s" is compile + the first call after it: the time from a built state to a finished first
step (the first call pays one-off costs beyond compilation: allocation, thread-pool start-up).
"chain" is the steps unrolled per loop iteration of a chain inside the step program, or
"host S" for a chain run as host-dispatched segments of S steps (ebm_jax/chain_program.py).

  python -m benchmarks.report benchmarks/results/cpu_*.json
"""

import json
import os
import sys


def row(name: str, r: dict) -> str:
  timing = r.get("step_s") or r.get("chain_s")
  flops = r.get("flops_per_step") or r.get("flops_per_chain")
  mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "–"
  extras = ", multiscale" * bool(r.get("multiscale")) + ", attention" * bool(r.get("attention"))
  config = os.path.basename(r.get("config", r["data"]))
  first = r.get("first_call_after_compile_s")
  to_first = f"{r['compile_s'] + first:.1f}" if first is not None else "–"
  cpu = r.get("cpu_model", "not recorded") if r.get("platform", "cpu") == "cpu" else r["device_kind"]
  # ebm_jax.cli.CPU_XLA_FLAGS (absent from results recorded before the set existed)
  flags = "set" if "onednn_custom_call=true" in (r.get("xla_flags") or "") else "none"
  # steps per loop iteration of a one-program chain, or host-dispatched segments (chain_program.py)
  segment = r.get("langevin_host_segment")
  chain = f"host {segment}" if segment else f"{r['langevin_unroll']}"
  return (f"| {name} | {r['benchmark']} | {config}: {r['model']} F={r['features']}{extras}; "
          f"data {r['data']} | "
          f"{r['batch_size']} | {r['langevin_steps']} | {chain} | "
          f"{r['device_count']}× {r['device_kind']} | {cpu} | {r['precision']} | {flags} | "
          f"{r['compile_s']:.1f} | {to_first} | "
          f"{timing['median']:.3f} ({timing['min']:.3f}–{timing['max']:.3f}, n={timing['n']}) | "
          f"{flops / 1e9:.1f} | {1e3 * r['achieved_tflops']:.1f} | {mfu} | "
          f"{r['peak_rss_mib']:.0f} |")


HEADER = ("| result | script | config: net; data | B | K | chain | devices | host CPU | precision | XLA flag set | "
          "compile s | first step s | "
          "median s (min–max, n) | GFLOP | GFLOP/s | MFU | peak RSS MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(paths: list[str]) -> None:
  print(HEADER)
  for path in paths:
    with open(path) as f:
      r = json.load(f)
    if r.get("benchmark") in ("train_step", "langevin"):
      print(row(os.path.basename(path)[:-5], r))


if __name__ == "__main__":
  main(sys.argv[1:])
