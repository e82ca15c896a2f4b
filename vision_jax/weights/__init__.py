"""Import and export of foreign checkpoints (timm, torchvision, google-research .npz).

Every loader matches through `weights.core` and reports every mismatch in one
`WeightLoadError`. `pretrained(tag)` resolves a name (timm tag, torchvision weights,
.npz file) through the Hugging Face hub cache and caches the conversion (`weights.hub`).
"""

import importlib

from vision_jax.weights.errors import WeightLoadError

# Imported on first use (PEP 562), so that `vision_jax.weights.hub` can parse a weights
# name (config checks, the tools' arguments) without importing JAX.
_LAZY = {"Pretrained": "hub", "PretrainedError": "hub", "pretrained": "hub",
         "from_npz": "npz", "to_npz": "npz", "from_timm": "timm",
         "from_torchvision": "torchvision"}

__all__ = ["Pretrained", "PretrainedError", "WeightLoadError", "from_npz", "from_timm",
           "from_torchvision", "pretrained", "to_npz"]


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(f"vision_jax.weights.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'vision_jax.weights' has no attribute {name!r}")
