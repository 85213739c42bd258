"""Runs many command lines of one entry point in one process, as `python -m MODULE ARGS` would
run each: the same flag parsing (cli.parse_flags) and the same `main`, with the flags reset in
between. One interpreter start and one jax import per entry point instead of one per case.

  python tests/clirun.py ebm_jax.sample < cases.json     # cases: a JSON list of argv lists

Prints one JSON list: {"argv", "code", "stdout", "stderr"} per case (stderr includes any
traceback). Used through `run_cli` below from the tests.
"""

import contextlib
import io
import importlib
import json
import os
import subprocess
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cases(module_name: str, cases: list[list[str]]) -> list[dict]:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  sys.argv = [module_name]
  module = importlib.import_module(module_name)
  if hasattr(module, "define_flags"):
    module.define_flags()
  from ebm_jax import cli  # pylint: disable=import-outside-toplevel
  results = []
  for argv in cases:
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)  # --config.* overrides are defined anew from each argv
    sys.argv = [module_name, *argv]  # ml_collections reads --config.* overrides from sys.argv
    out, err = io.StringIO(), io.StringIO()
    handler = absl_logging.get_absl_handler()
    previous = handler.python_handler.stream
    handler.python_handler.stream = err  # log lines (warnings) go with the case's stderr
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        module.main(cli.parse_flags(sys.argv))
        code = 0
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except Exception:  # pylint: disable=broad-except  (what a user would see: a traceback)
        traceback.print_exc()
        code = 1
      finally:
        handler.python_handler.stream = previous
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(),
                    "stderr": err.getvalue()})
  return results


def run_cli(module_name: str, cases: list[list[str]], timeout: int = 900,
            env: dict | None = None) -> list[dict]:
  """The results of `cases` (argv lists) for `python -m module_name`, in one subprocess."""
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "clirun.py"), module_name],
                        input=json.dumps(cases), capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT, env=dict(os.environ, **(env or {})))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  _cases = json.load(sys.stdin)
  _results = _run_cases(sys.argv[1], _cases)
  sys.stdout.write("\n" + json.dumps(_results) + "\n")
