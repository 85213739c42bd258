"""Signals around the training loop: SIGTERM / SIGINT as a request to checkpoint and stop
(preemption). Tests signal a process after a step through ebm_jax.faults."""

import signal
import threading

from absl import logging


class StopRequest:
  """SIGTERM / SIGINT handling for preemption: the first signal asks the loop to finish the
  current step, checkpoint and return; a second SIGINT interrupts at once. Handlers are only
  installed from the main thread and are restored on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("Received %s: finishing this step, writing a checkpoint, then exiting "
                    "(rerun the same command to continue).", signal.Signals(signum).name)

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def name(self) -> str:
    """The received signal's name (SIGTERM, SIGINT); empty before one arrived."""
    return signal.Signals(self.signum).name if self.signum is not None else ""

