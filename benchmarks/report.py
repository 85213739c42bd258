"""Prints a Markdown table of benchmark JSON files (train_step and langevin results).

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
  return (f"| {name} | {r['benchmark']} | {config}: {r['model']} F={r['features']}{extras}; "
          f"data {r['data']} | "
          f"{r['batch_size']} | {r['langevin_steps']} | {r['langevin_unroll']} | "
          f"{r['device_count']}× {r['device_kind']} | {r['precision']} | {r['compile_s']:.1f} | "
          f"{timing['median']:.3f} ({timing['min']:.3f}–{timing['max']:.3f}, n={timing['n']}) | "
          f"{flops / 1e9:.1f} | {1e3 * r['achieved_tflops']:.1f} | {mfu} | "
          f"{r['peak_rss_mib']:.0f} |")


HEADER = ("| result | script | config: net; data | B | K | unroll | devices | precision | compile s | "
          "median s (min–max, n) | GFLOP | GFLOP/s | MFU | peak RSS MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(paths: list[str]) -> None:
  print(HEADER)
  for path in paths:
    with open(path) as f:
      r = json.load(f)
    if r.get("benchmark") in ("train_step", "langevin"):
      print(row(os.path.basename(path)[:-5], r))


if __name__ == "__main__":
  main(sys.argv[1:])
