"""What every command-line entry point shares: quiet library logs, and user errors printed as
one line without a traceback (exit code 2; 3 when training diverged). --debug shows them."""

import logging as py_logging
import sys
from typing import Callable

from absl import flags

from ebm_jax import config_lib, data

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


class _QuietLibraries(py_logging.Filter):
  """Drops INFO lines from orbax (dozens per checkpoint); warnings and errors pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def quiet_library_logs() -> None:
  for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
  py_logging.getLogger("absl").addFilter(_QuietLibraries())


def run_guarded(fn: Callable[[], None]) -> None:
  """Runs fn; user-facing errors become a message on stderr and an exit code."""
  from ebm_jax import train  # train imports much; keep this module light
  quiet_library_logs()
  debug = flags.FLAGS["debug"].value if "debug" in flags.FLAGS else False
  try:
    fn()
  except (config_lib.UserError, data.DataError) as e:
    if debug:
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except train.DivergenceError as e:
    if debug:
      raise
    print(f"training stopped: {e}", file=sys.stderr)
    sys.exit(EXIT_DIVERGED)
