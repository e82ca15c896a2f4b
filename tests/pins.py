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


def smallest_per_family() -> dict[str, str]:
  """{family: its registered model with the fewest pinned parameters}.

  A registered model without a pin ranks last here; test_models.py's
  test_every_registered_model_is_pinned reports it, not the collection.
  """
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  counts = param_counts()
  smallest: dict[str, str] = {}
  for name in models.list_models():
    family = models.model_info(name).family
    best = smallest.get(family)
    if best is None or counts.get(name, float("inf")) < counts.get(best, float("inf")):
      smallest[family] = name
  return smallest
