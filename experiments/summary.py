"""Mean and spread over seeds, and the environment record, for the experiments/ scripts."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import numpy as np

# The experiments import vision_jax from the checkout they live in, not from wherever
# it is installed, so that environment.json records the code that actually ran.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def spread(values: Sequence[float]) -> dict[str, Any]:
  """Per-seed values with their mean, sample standard deviation, min and max (in %)."""
  percent = [round(100.0 * float(v), 2) for v in values]
  array = np.asarray(percent)
  return {"per_seed": percent, "mean": round(float(array.mean()), 2),
          "std": round(float(array.std(ddof=1)), 2) if len(array) > 1 else 0.0,
          "min": round(float(array.min()), 2), "max": round(float(array.max()), 2)}


def describe(name: str, stats: dict[str, Any]) -> str:
  """'name: 91.2 +- 1.3 % (min 89.4, max 92.8, n=5)'."""
  return (f"{name}: {stats['mean']:.1f} +- {stats['std']:.1f} % (min {stats['min']:.1f}, "
          f"max {stats['max']:.1f}, n={len(stats['per_seed'])})")


def write_json(path: str, record: dict[str, Any]) -> None:
  """Writes `record` atomically (temporary file, then rename)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(temporary, path)
