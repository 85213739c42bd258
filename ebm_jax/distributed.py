"""Several processes on JAX's distributed runtime: start-up, a barrier after compiling the
step (compile_together), and a watch that ends a process in one clear line when another
process of the run is lost.

Without the watch a lost process is noticed by the coordination service only after its
heartbeat timeout, and the survivors then abort inside C++ ("Terminating process because the
JAX distributed service detected fatal errors", a stack dump, SIGABRT), or hang in a
collective until then. The watch runs beside training in each process: every second it bumps
a counter of its own in the coordination service's key-value store and reads the others'; a
peer whose counter has not moved for half the heartbeat timeout (or a coordinator that no
longer answers) ends this process with exit code 4 and a line saying what to do. Checkpoints
already committed are kept; rerunning every process with the same command resumes from the
latest one.
"""

import contextlib
import os
import sys
import threading
import time

import jax
from absl import logging

from ebm_jax.errors import UserError

EXIT_PEER_LOST = 4
_PREFIX = "ebm_jax/alive/"
_DONE = "done"
_watch: "PeerWatch | None" = None


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, heartbeat_timeout: int) -> None:
  """jax.distributed.initialize with the given values (None: auto-detected), gloo collectives
  for CPU devices, and the peer watch when there is more than one process."""
  if num_processes is not None and num_processes < 1:
    raise UserError(f"--num_processes={num_processes} must be at least 1")
  if process_id is not None and num_processes is not None and not (
      0 <= process_id < num_processes):
    raise UserError(f"--process_id={process_id} must lie in [0, "
                    f"--num_processes={num_processes})")
  if heartbeat_timeout < 2:
    raise UserError(f"--heartbeat_timeout={heartbeat_timeout} must be at least 2 (seconds)")
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  # Collectives between CPU devices of different processes (tests, CPU clusters) need gloo;
  # the setting does not touch GPU or TPU collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None},
                             heartbeat_timeout_seconds=heartbeat_timeout)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one process logs progress
  if jax.process_count() > 1:
    global _watch
    _watch = PeerWatch(heartbeat_timeout / 2)
    _watch.start()


@contextlib.contextmanager
def watched():
  """Runs the body (training) under the peer watch. On a normal end the other processes are
  told that this one finished (its silence is then no loss). A runtime error in the body, such
  as gloo's "Connection reset by peer" from a collective whose peer was killed, is held until
  the watch has had time to decide whether a process was lost: if so the watch ends this
  process with its one line, otherwise the error propagates. Without a watch: just the body."""
  global _watch
  try:
    yield
  except jax.errors.JaxRuntimeError:
    if _watch is not None and _watch.is_alive():
      _watch.join(timeout=_watch.stale_s + 5 * _watch.every_s)  # os._exit inside if lost
    raise
  if _watch is not None:
    _watch.stop()
    _watch = None


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Every process waits here for the others (the coordination service's barrier: no
  collective, so no gloo time limit); nothing to do in a single process. `name` must be new
  for each barrier of a run."""
  if jax.process_count() > 1:
    _client().wait_at_barrier(f"ebm_jax/{name}", timeout_in_ms=timeout_s * 1000)


def compile_together(jitted, *args, name: str):
  """Compiles `jitted` for `args`, waits for the other processes, and returns the compiled
  program for every later call with arguments of the same shapes (calling `jitted` would
  compile again). gloo gives every process 30 s to reach a new collective, and under load
  compiling a training step can take one process minutes longer than another ("Gloo context
  initialization failed: ... timed out", seen in tests on 2 busy cores). One process: `jitted`."""
  if jax.process_count() == 1:
    return jitted
  compiled = jitted.lower(*args).compile()
  barrier(f"compiled-{name}")
  return compiled


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  # The key-value store of the coordination service; jax exposes no public handle to it.
  return jax_distributed.global_state.client


class PeerWatch(threading.Thread):
  """Ends this process (exit code 4, one line) when another process stops showing signs of
  life for `stale_s` seconds or the coordinator stops answering. A daemon thread: it never
  keeps a finished process alive."""

  def __init__(self, stale_s: float, every_s: float = 1.0, client=None):
    super().__init__(name="ebm_jax-peer-watch", daemon=True)
    self.stale_s, self.every_s = stale_s, every_s
    self.client = client or _client()
    self.me, self.count = jax.process_index(), jax.process_count()
    self._stopping = threading.Event()

  def stop(self) -> None:
    self._stopping.set()
    self.join()
    self.client.key_value_set(f"{_PREFIX}{self.me}", _DONE, allow_overwrite=True)

  def run(self) -> None:
    beat = 0
    last_seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.me}
    while not self._stopping.is_set():
      beat += 1
      try:
        self.client.key_value_set(f"{_PREFIX}{self.me}", str(beat), allow_overwrite=True)
        values = dict(self.client.key_value_dir_get(_PREFIX))
      except Exception as e:  # pylint: disable=broad-except  (the coordinator is gone)
        self._stop_process(f"process {self.me} lost contact with the coordinator (process 0) "
                           f"of this distributed run ({type(e).__name__})")
      now = time.monotonic()
      for peer, (value, since) in last_seen.items():
        current = values.get(f"{_PREFIX}{peer}")
        if current == _DONE or current != value:
          last_seen[peer] = (current, now)
        elif now - since > self.stale_s:
          self._stop_process(f"process {peer} of {self.count} in this distributed run stopped "
                             f"responding (no sign of life for {now - since:.0f} s)")
      self._stopping.wait(self.every_s)

  def _stop_process(self, what: str) -> None:
    # No jax call here: from this thread, while the main thread waits in a collective, even
    # jax.process_index() can try to initialise the backend again and raise.
    print(f"error: {what}; this process (process {self.me}) stops too. Checkpoints "
          "already written are kept: rerun every process with the same command to resume from "
          "the latest one.", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access  (a collective may never return)
