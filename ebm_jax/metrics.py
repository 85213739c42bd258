"""Metric output: TensorBoard (clu writers) and a JSON-lines file for notebooks and scripts.
Only the writing process (process 0) writes anything; progress (steps/s, ETA) is the training
loop's one console line. Where TensorFlow is not installed (clu's writers import it; a bare
accelerator image), one warning says so and training writes metrics.jsonl only, its steps/s
measured without clu."""

import functools
import importlib
import json
import math
import os
import time

import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"


@functools.cache
def clu_module(name: str):
  """clu.`name`, or None (with one warning) where its import fails for want of TensorFlow."""
  try:
    return importlib.import_module(f"clu.{name}")
  except ImportError as e:
    logging.warning("clu.%s cannot be imported (%s): no TensorBoard events, metrics.jsonl only; "
                    "pip install tensorflow-cpu clu for them", name, e)
    return None


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Scalars to TensorBoard and metrics.jsonl; images to TensorBoard.

  On resume from step s, rows for steps > s (written after the checkpoint by a run that was
  then interrupted) are dropped, so the file reads as one uninterrupted run. Event rows (a
  divergence-guard rollback: {"step", "event", ...}) are always kept.
  """

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0,
               num_steps: int | None = None):
    self.enabled = enabled
    self._clu = None
    self._jsonl = None
    if not enabled:
      return
    # clu's writers need TensorFlow and tensorboard, which clu does not declare as dependencies;
    # imported here, not at the top.
    metric_writers = clu_module("metric_writers")
    # TensorBoard only: the console gets one progress line, the training loop's own (steps/s
    # and ETA at every log step; perf/steps_per_sec goes to TensorBoard with the scalars).
    if metric_writers is not None:
      self._clu = metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
    del num_steps
    self._path = os.path.join(workdir, METRICS_FILE)
    self._truncate(start_step)
    self._jsonl = open(self._path, "a")

  def _truncate(self, step: int) -> None:
    """Drops the scalar rows of steps after `step`."""
    if os.path.exists(self._path):
      kept = [r for r in read_jsonl(self._path) if r["step"] <= step or "event" in r]
      with open(self._path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)

  def rollback(self, step: int, event: dict) -> None:
    """Training went back to `step`: drop later scalar rows, record why (an event row)."""
    if not self.enabled:
      return
    self._jsonl.close()
    self._truncate(step)
    self._jsonl = open(self._path, "a")
    self._jsonl.write(json.dumps({"step": event.get("trip_step", step), **event}) + "\n")
    self._jsonl.flush()

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    if self._clu is not None:
      self._clu.write_scalars(step, scalars)
    # NaN/inf are not JSON: such values are left out of the row (TensorBoard keeps them).
    row = {k: v for k, v in scalars.items() if math.isfinite(v)}
    self._jsonl.write(json.dumps({"step": step, **row}) + "\n")
    self._jsonl.flush()

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    if self.enabled and self._clu is not None:
      self._clu.write_images(step, images)

  def flush(self) -> None:
    if self.enabled:
      if self._clu is not None:
        self._clu.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      if self._clu is not None:
        self._clu.close()
      self._jsonl.close()
      logging.info("Metrics written to %s", METRICS_FILE)


class Progress:
  """The training loop's progress action (every step): the steps/s between log steps that clu's
  ReportProgress measures, set as `done.rate` for the console line (clu's own note of it is held back from the log). Counted from
  the first step's end (compilation excluded) or the state a rollback went back to (`restart`)."""
  hold_note = staticmethod(lambda record: not str(record.msg).startswith("Setting work unit"))

  def __init__(self, train):
    self.train, self.done = train, None
    logging.get_absl_logger().addFilter(Progress.hold_note)  # the same filter is added once
    self.restart(None)

  def restart(self, step: int | None) -> int | None:
    periodic_actions = clu_module("periodic_actions")  # (it imports TensorFlow)
    if periodic_actions is None:
      self.report = _Rate(self.train.log_every, self)
    else:
      self.report = periodic_actions.ReportProgress(  # it reports to write_scalars
          num_train_steps=self.train.num_steps, every_steps=self.train.log_every or None,
          every_secs=None, writer=self)
    if step is not None:
      self.report(step)  # clu's first call marks the start
    return step

  def __call__(self, done) -> None:
    self.done = done
    self.report(done.step)

  def write_scalars(self, _, scalars: dict[str, float]) -> None:
    if "steps_per_sec" in scalars:
      self.done.rate = scalars["steps_per_sec"]


class _Rate:
  """Steps/s between log steps, to `writer.write_scalars`, where clu cannot be imported."""

  def __init__(self, every: int, writer):
    self.every, self.writer, self.last = every, writer, None

  def __call__(self, step: int) -> None:
    now = time.perf_counter()
    if self.last is None:
      self.last = (step, now)
    elif self.every and step % self.every == 0 and step > self.last[0]:
      rate = (step - self.last[0]) / max(now - self.last[1], 1e-9)
      self.last = (step, now)
      self.writer.write_scalars(step, {"steps_per_sec": rate})
