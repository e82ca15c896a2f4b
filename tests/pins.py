"""The pinned parameter counts of every registered model, gathered from tests/pinned_*.py.

`tests/test_models.py` checks each pin against the model (through `jax.eval_shape`); other
tests read the pins instead of tracing the whole registry again at collection time.
"""

import glob
import importlib
import os


def param_counts() -> dict[str, int]:
  """{model name: parameter count with 1000 classes} over all pinned_*.py files."""
  counts = {}
  for path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "pinned_*.py"))):
    module = importlib.import_module(f"tests.{os.path.basename(path)[:-3]}")
    for name, count in module.PARAM_COUNTS.items():
      assert name not in counts, f"{name} pinned twice"
      counts[name] = count
  return counts
