"""Metric writers: TensorBoard (clu) plus WORKDIR/metrics.jsonl, and progress/ETA on the console.

Only process 0 writes files. The console gets one line per logged training step
(`log_progress`) and one per evaluation (`MetricWriter.write(..., console=True)`),
never the same numbers twice: clu's logging writer is not used.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
from absl import logging
from clu import metric_writers


class MetricWriter:
  """Writes scalar dicts, on process 0, to TensorBoard (clu, asynchronous) and metrics.jsonl."""

  def __init__(self, workdir: str):
    self._lead = jax.process_index() == 0
    self._clu = (metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
                 if self._lead else None)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self._lead else None

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
