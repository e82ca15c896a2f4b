"""The one timing loop of the benchmarks: wall and CPU seconds, sides alternated in rounds.

On a machine that other work shares, timing side A for N rounds and then side B
for N rounds lets a burst of load land on one side only. `alternate` runs the
sides in turn within each round and returns every round's seconds, so that the
medians (`medians`) compare like with like. CPU seconds (`time.process_time`,
every thread of this process) barely move with outside load, which makes them the
figure to compare across machines that are busy.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
  """(fn(), wall seconds, CPU seconds of this process) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  return result, time.perf_counter() - wall, time.process_time() - cpu


def alternate(sides: Mapping[str, Callable[[], Any]], rounds: int,
              warmup: int = 0, settle: int = 0) -> dict[str, list[float]]:
  """{side: [wall seconds of each round]}: each side called once per round, in turn.

  Alternating shares the machine's drift between the sides, but a side's first call
  after another side's is not its steady state: on XLA:CPU, ConvNeXt-T's training
  step (batch 16, 128 px) took 5.5-7 s right after another program's step and
  2.8-3.0 s right after its own (docs/efficiency.md). `settle` untimed calls of a side
  just before its timed one measure the side as a training loop runs it.

  Args:
    sides: name -> a call to time (a step, a batch, a whole pass); it must finish its
      work before returning (block on device results inside it).
    rounds: the number of timed rounds (at least 1).
    warmup: untimed rounds first (compilation, allocator warm-up).
    settle: untimed calls of each side right before its timed call, in every round.
  """
  if rounds < 1:
    raise ValueError(f"rounds={rounds}: time at least one round.")
  for _ in range(warmup):
    for call in sides.values():
      call()
  times: dict[str, list[float]] = {name: [] for name in sides}
  for _ in range(rounds):
    for name, call in sides.items():
      for _ in range(settle):
        call()
      times[name].append(timed(call)[1])
  return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
  """{side: median seconds} of `alternate`'s rounds."""
  return {name: float(statistics.median(values)) for name, values in times.items()}
