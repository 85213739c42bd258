"""Signals around the training loop: SIGTERM / SIGINT as a request to checkpoint and stop
(preemption), and the fault-injection hook with which tests signal a process after a step."""

import os
import signal
import threading
from typing import Callable

import jax
import ml_collections
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


def debug_signal(config: ml_collections.ConfigDict, step: int, state,
                 wait_for_saves: Callable[[], None]) -> None:
  """Fault injection for tests: the process signals itself after a chosen step. Before a
  SIGKILL every checkpoint already started is let finish, so the kill lands at a known point:
  the latest complete checkpoint is the last one written before this step."""
  if (config.debug.signal_at_step and step == config.debug.signal_at_step
      and config.debug.signal_process in (-1, jax.process_index())):
    jax.block_until_ready(state)
    if config.debug.signal == "KILL":
      wait_for_saves()
    os.kill(os.getpid(), getattr(signal, f"SIG{config.debug.signal}"))
