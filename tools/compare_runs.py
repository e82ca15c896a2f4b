"""Prints what differs between two runs: environment fields and final metrics.

  python tools/compare_runs.py WORKDIR_A WORKDIR_B [--all] [--rtol 0.0]

Reads WORKDIR/environment.json (written at the start of every run) and the last
evaluation record of WORKDIR/metrics.jsonl. Nested fields are compared by
dotted key (`config.schedule.base_lr`, `settings.XLA_FLAGS`, `packages.jax`);
the CPU's feature flags are compared as sets, so only the flags that one CPU
has and the other lacks are printed. The `run` section (time, host, command
line, process id) differs between any two runs and is skipped unless --all.

Output, one line per difference: `KEY: A_VALUE -> B_VALUE`, environment fields
first, then `metrics.NAME`. A field present in only one run prints `<absent>`.

Exit status (as diff(1)): 0 when nothing differs, 1 when something does, 2 when
a workdir lacks environment.json or metrics.jsonl cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from vision_jax import environment
from vision_jax.cli.common import run
from vision_jax.environment import ENVIRONMENT_FILE
from vision_jax.train import metrics as metrics_lib

ABSENT = "<absent>"
# Keys that only training log records carry; the evaluation records have none of them.
TRAIN_ONLY_KEYS = ("loss", "learning_rate", "steps_per_sec")
# Sections of environment.json that differ between any two runs.
VOLATILE_SECTIONS = ("run",)
SET_VALUED = ("cpu.flags", "code.changed_files")


class RunReadError(Exception):
  """A workdir lacks a file that compare_runs needs, or the file is not valid JSON."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for key, value in tree.items():
      out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
  return {prefix: tree}


def read_environment(workdir: str) -> dict[str, Any]:
  """environment.read_environment, its errors as RunReadError."""
  path = os.path.join(workdir, ENVIRONMENT_FILE)
  try:
    return environment.read_environment(workdir)
  except FileNotFoundError:
    raise RunReadError(f"{path} does not exist: is {workdir!r} a run's workdir? Runs write "
                       f"it at start (vision_jax.environment.write_environment).") from None
  except json.JSONDecodeError as e:
    raise RunReadError(f"{path} is not valid JSON ({e}).") from None


def final_metrics(workdir: str) -> dict[str, Any]:
  """The last evaluation record of metrics.jsonl (without its step), or {} if there is none."""
  if not os.path.isfile(metrics_lib.metrics_path(workdir)):
    return {}
  try:
    records = metrics_lib.read_metrics(workdir)
  except metrics_lib.MetricsFileError as e:
    if "is empty" in str(e):
      return {}
    raise RunReadError(str(e)) from None
  evals = [r for r in records if not any(key in r for key in TRAIN_ONLY_KEYS)]
  return evals[-1] if evals else {}


def _differs(a: Any, b: Any, rtol: float) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
    return not math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)
  return a != b


def _show(value: Any) -> str:
  return value if value is ABSENT else json.dumps(value)


def differences(a: dict[str, Any], b: dict[str, Any], rtol: float = 0.0,
                prefix: str = "") -> list[str]:
  """One `KEY: A -> B` line per dotted key whose values differ (set-valued keys as +/-)."""
  flat_a, flat_b = flatten(a), flatten(b)
  lines = []
  for key in sorted(set(flat_a) | set(flat_b)):
    value_a, value_b = flat_a.get(key, ABSENT), flat_b.get(key, ABSENT)
    name = prefix + key
    if key in SET_VALUED and isinstance(value_a, list) and isinstance(value_b, list):
      only_a, only_b = sorted(set(value_a) - set(value_b)), sorted(set(value_b) - set(value_a))
      if only_a or only_b:
        lines.append(f"{name}: only in A {only_a}, only in B {only_b}")
    elif _differs(value_a, value_b, rtol):
      lines.append(f"{name}: {_show(value_a)} -> {_show(value_b)}")
  return lines


def compare(workdir_a: str, workdir_b: str, include_volatile: bool = False,
            rtol: float = 0.0) -> list[str]:
  """The difference lines between two workdirs: environment first, then final metrics."""
  env_a, env_b = read_environment(workdir_a), read_environment(workdir_b)
  if not include_volatile:
    for section in VOLATILE_SECTIONS:
      env_a.pop(section, None)
      env_b.pop(section, None)
  metrics_a, metrics_b = final_metrics(workdir_a), final_metrics(workdir_b)
  metrics_a.pop("step", None)
  metrics_b.pop("step", None)
  return (differences(env_a, env_b) +
          differences(metrics_a, metrics_b, rtol=rtol, prefix="metrics."))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir_a")
  parser.add_argument("workdir_b")
  parser.add_argument("--all", action="store_true",
                      help="also compare the run section (time, host, command line)")
  parser.add_argument("--rtol", type=float, default=0.0,
                      help="relative tolerance for metrics (default 0: any change counts)")
  args = parser.parse_args(argv)
  try:
    lines = compare(args.workdir_a, args.workdir_b, include_volatile=args.all, rtol=args.rtol)
  except RunReadError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for line in lines:
    print(line)
  return 1 if lines else 0


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
