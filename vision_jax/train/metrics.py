"""Metric writers: TensorBoard (clu) plus WORKDIR/metrics.jsonl, and progress/ETA on the console.

`read_metrics(workdir)` is the one reader of metrics.jsonl (plots, tools/compare_runs.py,
the benchmarks), next to its writer `MetricWriter`.

Only process 0 writes files. The console gets one line per logged training step
(`log_progress`) and one per evaluation (`MetricWriter.write(..., console=True)`),
never the same numbers twice: clu's logging writer is not used.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from absl import logging

METRICS_FILE = "metrics.jsonl"


class MetricsFileError(ValueError):
  """A workdir's metrics.jsonl is missing, empty or damaged; the message names the fix."""


class MetricWriter:
  """Writes scalar dicts, on process 0, to TensorBoard (clu, asynchronous) and metrics.jsonl."""

  def __init__(self, workdir: str):
    # Imported here: readers of metrics.jsonl (plots, tools) need neither JAX nor clu.
    import jax  # pylint: disable=import-outside-toplevel
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
    self._lead = jax.process_index() == 0
    self._clu = (metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
                 if self._lead else None)
    self._jsonl = open(metrics_path(workdir), "a") if self._lead else None

  def write(self, step: int, scalars: Mapping[str, Any], console: bool = False) -> None:
    """Records `scalars` at `step`; with `console`, also logs them as one line (every process)."""
    scalars = {k: float(v) for k, v in scalars.items()}
    if console:
      logging.info("step %d: %s", step, ", ".join(f"{k} {v:.6g}" for k, v in scalars.items()))
    if self._clu:
      self._clu.write_scalars(step, scalars)
    if self._jsonl:
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
      self._jsonl.flush()

  def close(self) -> None:
    if self._clu:
      self._clu.flush()
      self._clu.close()
    if self._jsonl:
      self._jsonl.close()


class Progress:
  """steps/s, images/s and ETA between two log points (compile time excluded)."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self._last_step, self._last_time = start_step, None

  def start(self, step: int) -> None:
    """Marks the first step after compilation as the timing origin."""
    self._last_step, self._last_time = step, time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    if self._last_time is None or step == self._last_step:
      self.start(step)
      return {}
    rate = (step - self._last_step) / (now - self._last_time)
    self._last_step, self._last_time = step, now
    return {"steps_per_sec": rate, "images_per_sec": rate * self.batch_size,
            "eta_seconds": (self.total_steps - step) / rate}


def format_eta(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def log_progress(step: int, total: int, scalars: Mapping[str, float]) -> None:
  parts = [f"step {step}/{total}"]
  for key in ("loss", "accuracy"):
    if key in scalars:
      parts.append(f"{key} {scalars[key]:.4f}")
  if "steps_per_sec" in scalars:
    parts.append(f"{scalars['steps_per_sec']:.2f} steps/s, {scalars['images_per_sec']:.0f} img/s, "
                 f"ETA {format_eta(scalars['eta_seconds'])}")
  logging.info(" | ".join(parts))


def metrics_path(workdir: str) -> str:
  """WORKDIR/metrics.jsonl, the file `MetricWriter` appends to."""
  return os.path.join(workdir, METRICS_FILE)


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of `WORKDIR/metrics.jsonl`, in the order written.

  A last line cut short (a run killed while writing it) is dropped; any other
  line that is not a JSON object with a "step" is an error naming the line.

  Raises:
    MetricsFileError: the workdir does not exist, holds no metrics.jsonl, or it is empty
      or damaged.
  """
  if not os.path.isdir(workdir):
    raise MetricsFileError(f"{workdir} does not exist or is not a directory; pass a training run's "
                    "workdir (the --workdir given to python -m vision_jax.main).")
  path = metrics_path(workdir)
  if not os.path.isfile(path):
    raise MetricsFileError(f"{workdir} has no metrics.jsonl: it is not a training run's workdir, or "
                    "the run has not logged its first step yet (the trainer writes one line "
                    "every config.log_every_steps).")
  with open(path, encoding="utf-8") as f:
    lines = [(i + 1, line.strip()) for i, line in enumerate(f) if line.strip()]
  records = []
  for position, (number, line) in enumerate(lines):
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or "step" not in record:
        raise ValueError("not an object with a 'step'")
    except ValueError as e:
      if position == len(lines) - 1 and position > 0:
        break  # the run was killed while writing its last line
      raise MetricsFileError(f"{path} line {number} is not a metrics record ({e}); the file is "
                      "damaged: remove that line or rerun the training.") from None
    records.append(record)
  if not records:
    raise MetricsFileError(f"{path} is empty: the run has not logged a step yet. Wait for its first "
                    "log line (config.log_every_steps) or pick a finished run.")
  return records
