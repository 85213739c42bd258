"""What every command-line entry point shares: quiet library logs, and user errors printed as
one line without a traceback. --debug shows the traceback.

Exit codes: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint (rerun to continue);
2 a mistake in flags, config or data (EXIT_USER_ERROR); 3 training diverged more often than
the divergence guard allows (EXIT_DIVERGED).
"""

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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`, with every mistake in
  the flags as one line naming the flag, exit code 2. ml_collections reports an unknown config
  field or a config file that fails as a KeyError/AttributeError/ValueError, which absl would
  otherwise show as a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:  # an error inside the config file
      head = message.split("\n")[0].rstrip(":")
      message = f"{head}: {message.strip().splitlines()[-1]}"
  except (KeyError, AttributeError) as e:
    field = str(e).strip("'\"")
    culprits = [a for a in argv[1:] if a.startswith("--config") and field in a]
    message = (f"{culprits[0] if culprits else 'a --config override'}: the config has no "
               f"field {field!r}; the fields and their meaning are in configs/default.py")
  except (ValueError, TypeError, OSError) as e:
    message = " ".join(str(e).split())
  if "--debug" in argv:
    raise
  print(f"error: {message}\nPass --helpshort for the flags.", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def load_config_flag(name: str = "config"):
  """The config of a config_file flag. ml_collections loads the file when the value is first
  read and raises then; a missing or broken file becomes a UserError naming the flag."""
  try:
    config = flags.FLAGS[name].value
    config.to_dict()  # a file that failed to load is a placeholder that raises on any access
    return config
  except (OSError, ImportError, SyntaxError, ValueError, AttributeError) as e:
    last = [line for line in str(e).splitlines() if line.strip()]
    raise config_lib.UserError(f"--{name}: {' / '.join(l.strip() for l in last[-2:])}") from e


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
