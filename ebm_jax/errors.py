"""The error classes every layer may raise (a leaf: imports nothing of ebm_jax, so no layer
needs another to raise them and no import cycle can form through them).

The command-line entry points (ebm_jax/cli.py) print UserError and DataError as one line with
exit code 2, and DivergenceError with exit code 3; --debug shows the traceback.
"""


class UserError(Exception):
  """A mistake in flags, config or data that the user can fix; the CLIs print the message
  without a traceback (pass --debug to see one)."""


class DataError(UserError):
  """Missing or unreadable data. The message says exactly what to install or download and
  where to put it, or which config field to set."""


class DivergenceError(RuntimeError):
  """The divergence guard tripped more often than guard.max_recoveries allows (or is off).
  `step` is the step at which it tripped last, `cause` what it saw."""

  def __init__(self, message: str, step: int | None = None, cause: str | None = None):
    super().__init__(message)
    self.step, self.cause = step, cause
