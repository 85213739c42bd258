"""The GPU check: the one script to run first whenever a GPU machine is at hand; it fits in
ten minutes of GPU time and writes one JSON.

  python -m benchmarks.gpu_check --fetch_wheels=.gpu_wheels   # here, with the package index
  python benchmarks/gpu_check.py --wheels=.gpu_wheels --out=$OUT/gpu_check.json   # on the GPU
  python -m benchmarks.gpu_check --dry_run --out=/tmp/gpu_check.json   # here: every stage, tiny

It uses the jax (and CUDA plugin) already installed and needs only the standard library to
start. Stages, each a child process with its own time limit inside `--budget_s` (a stage that
fails or runs out of time is recorded, and the next one runs):
  env      backend, device kind and count, jax and jaxlib versions, device memory
  install  the modules the package imports that are missing (ml_collections, dm_pix, blackjax,
           pytest, ...), from the carried wheels only (pip --no-index --no-deps); TensorFlow,
           tensorflow-datasets and clu are not needed: the package trains without them
           (metrics.jsonl only) on data that is not read through tfds
  tests    the tests that recompute the step and its parts independently (ACCELERATOR_TESTS),
           on the accelerator
  steps    `benchmarks.train_step` on the cifar10 step and the celebahq step (128 per device),
           both on the procedural shapes at the config's size (the step's cost does not depend
           on pixel values): compile time apart, median of repeats, TFLOP/s and MFU against the
           device's bf16 / TF32 peak (benchmarks/common.py), peak device memory
  train    a short cifar10 run on shapes data with the quality hook at its end (the shapes
           classifier trained once on the device), its steps/s and quality line
--dry_run runs every stage on the digits quickstart's tiny variant with one repeat, on
whatever device there is, so the script and its parsing are tested without a GPU
(tests/test_benchmarks.py).
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# import name -> distribution: what the package, its tests and the benchmarks import that a bare
# jax + flax + optax + orbax + chex + scipy + scikit-learn + matplotlib image lacks.
CARRIED = {"ml_collections": "ml-collections", "yaml": "PyYAML", "dm_pix": "dm-pix",
           "blackjax": "blackjax", "absl": "absl-py", "typing_extensions": "typing-extensions",
           "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig",
           "pygments": "pygments", "packaging": "packaging"}
ACCELERATOR_TESTS = ["tests/test_step_oracle.py", "tests/test_langevin.py", "tests/test_losses.py",
                     "tests/test_models.py"]
STAGE_LIMITS = {"env": 60, "install": 60, "tests": 150, "steps": 330, "train": 180}


def run(cmd: list[str], limit: float, env: dict | None = None) -> dict:
  """One child process: its exit code, seconds and the tail of its output."""
  t0 = time.perf_counter()
  try:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(limit, 1),
                       env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))
    rc, out = p.returncode, p.stdout + p.stderr
  except subprocess.TimeoutExpired as e:
    def text(v):
      return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")
    rc, out = "timeout", text(e.stdout) + text(e.stderr)
  return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
          "tail": out[-2000:]}


def last_json(text: str) -> dict | None:
  """The last line of `text` that parses as a JSON object."""
  for line in reversed(text.splitlines()):
    line = line.strip()
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  return None


def pytest_counts(text: str) -> dict:
  """{'passed': n, 'failed': n, ...} from pytest's summary line."""
  return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", text)}


ENV_PROBE = """
import json, jax
d = jax.devices()[0]
stats = getattr(d, "memory_stats", lambda: None)() or {}
print(json.dumps({"backend": jax.default_backend(), "device_kind": d.device_kind,
                  "device_count": jax.device_count(), "jax": jax.__version__,
                  "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                  "bytes_limit": stats.get("bytes_limit")}))
"""


def stage_env(limit: float, _: argparse.Namespace) -> dict:
  r = run([sys.executable, "-c", ENV_PROBE], limit)
  return {**r, "result": last_json(r["tail"])}


def missing_modules() -> list[str]:
  return [m for m in CARRIED if importlib.util.find_spec(m) is None]


def stage_install(limit: float, args: argparse.Namespace) -> dict:
  missing = missing_modules()
  if not missing:
    return {"rc": 0, "missing": [], "installed": []}
  if not args.wheels:
    return {"rc": 1, "missing": missing, "error": "missing modules and no --wheels folder"}
  dists = [CARRIED[m] for m in missing]
  r = run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
           os.path.abspath(args.wheels), *dists], limit)
  importlib.invalidate_caches()
  return {**r, "missing": missing, "installed": dists, "still_missing": missing_modules()}


def stage_tests(limit: float, args: argparse.Namespace) -> dict:
  cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
         "-m", "not slow", "-x", *ACCELERATOR_TESTS]
  if args.dry_run:  # one file is enough to exercise the stage
    cmd = cmd[:-len(ACCELERATOR_TESTS)] + [ACCELERATOR_TESTS[-1], "-k", "mlp"]
  r = run(cmd, limit)
  return {**r, "counts": pytest_counts(r["tail"])}


def step_commands(dry_run: bool, folder: str) -> dict[str, list[str]]:
  """The timed steps; the dry run times the digits step once in their place (a CPU compiles
  the cifar10 and celebahq steps for minutes), through the same code."""
  base = [sys.executable, "-m", "benchmarks.train_step"]
  if dry_run:
    tail = ["--repeats=1", "--warmup=0"]
    configs = {"cifar10": ["--config=configs/digits.py:tiny"]}  # one compile is enough
  else:
    tail = ["--config.data.name=shapes", "--repeats=5", "--warmup=1"]
    configs = {"cifar10": ["--config=configs/cifar10.py"],
               "celebahq": ["--config=configs/celebahq.py", "--config.train.batch_size=128",
                            "--config.buffer.per_device=False"]}
  return {name: base + flags[:1] + tail + flags[1:] + [f"--out={folder}/{name}.json"]
          for name, flags in configs.items()}


def stage_steps(limit: float, args: argparse.Namespace) -> dict:
  out, t0 = {}, time.perf_counter()
  folder = tempfile.mkdtemp(prefix="gpu_check_steps_")
  for name, cmd in step_commands(args.dry_run, folder).items():
    left = limit - (time.perf_counter() - t0)
    r = run(cmd, left)
    path = os.path.join(folder, f"{name}.json")
    result = None
    if os.path.exists(path):
      with open(path) as f:
        result = json.load(f)
    out[name] = {**r, "result": result}
  out["rc"] = 0 if all(v["rc"] == 0 for v in out.values() if isinstance(v, dict)) else 1
  return out


def stage_train(limit: float, args: argparse.Namespace) -> dict:
  workdir = tempfile.mkdtemp(prefix="gpu_check_train_")
  steps = 4 if args.dry_run else 300
  # the dry run: the digits quickstart's tiny variant, whose quality hook needs the digits
  # classifier (trained in seconds on a CPU, cached); on the GPU cifar10 on shapes data
  config = (["--config=configs/digits.py:tiny"] if args.dry_run else
            ["--config=configs/cifar10.py", "--config.data.name=shapes"])
  cmd = [sys.executable, "-m", "ebm_jax.main", *config, f"--workdir={workdir}",
         f"--config.train.num_steps={steps}", f"--config.train.eval_every={steps}",
         f"--config.train.log_every={max(steps // 3, 1)}", "--config.eval.num=256"]
  r = run(cmd, limit)
  rows = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  rates = [row["perf/steps_per_sec"] for row in rows if "perf/steps_per_sec" in row]
  quality = {k: v for row in rows for k, v in row.items() if k.startswith("quality/")}
  return {**r, "workdir": workdir, "steps_per_sec": rates[-1] if rates else None,
          "quality": quality}


STAGES = {"env": stage_env, "install": stage_install, "tests": stage_tests,
          "steps": stage_steps, "train": stage_train}


def fetch_wheels(folder: str) -> int:
  """Downloads, for Python 3.12 on x86-64 Linux, the wheels of CARRIED at the versions
  installed here."""
  pins = []
  for dist in CARRIED.values():
    try:
      pins.append(f"{dist}=={importlib.metadata.version(dist)}")
    except importlib.metadata.PackageNotFoundError:
      pins.append(dist)
  return subprocess.call([sys.executable, "-m", "pip", "download", "--no-deps", "-d", folder,
                          "--only-binary=:all:", "--python-version", "3.12",
                          "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                          "--platform", "manylinux2014_x86_64", "--platform", "any", *pins])


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="gpu_check.json", help="the JSON written")
  p.add_argument("--wheels", default="", help="folder of carried wheels (--fetch_wheels)")
  p.add_argument("--dry_run", action="store_true", help="every stage, tiny, on any device")
  p.add_argument("--budget_s", type=float, default=540.0, help="all stages together")
  p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
  p.add_argument("--fetch_wheels", default="", help="download the wheels into this folder")
  args = p.parse_args(argv)
  if args.fetch_wheels:
    return fetch_wheels(args.fetch_wheels)
  names = [s for s in args.stages.split(",") if s]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    p.error(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
  report = {"dry_run": args.dry_run, "budget_s": args.budget_s, "stages": {}}
  t0 = time.perf_counter()
  for name in names:
    left = args.budget_s - (time.perf_counter() - t0)
    if left < 5:
      report["stages"][name] = {"rc": "skipped", "reason": "out of budget"}
      continue
    limit = min(STAGE_LIMITS[name] * (4 if args.dry_run else 1), left)  # CPUs compile slowly
    print(f"gpu_check: {name} (limit {limit:.0f} s)", flush=True)
    report["stages"][name] = STAGES[name](limit, args)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "w") as f:  # rewritten after every stage: nothing lost on a kill
      json.dump(report, f, indent=2)
  report["ok"] = all(s.get("rc") == 0 for s in report["stages"].values())
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps({k: (v.get("rc") if isinstance(v, dict) else v)
                    for k, v in report["stages"].items()}))
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
