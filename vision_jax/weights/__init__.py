"""Import and export of foreign checkpoints."""

from vision_jax.weights.timm import WeightLoadError, from_timm

__all__ = ["WeightLoadError", "from_timm"]
