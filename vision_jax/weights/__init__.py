"""Import and export of foreign checkpoints."""

from vision_jax.weights.timm import WeightLoadError, from_timm

__all__ = ["WeightLoadError", "from_timm"]
from vision_jax.weights.npz import from_npz, to_npz  # noqa: E402
from vision_jax.weights.torchvision import from_torchvision  # noqa: E402

__all__ += ["from_npz", "from_torchvision", "to_npz"]
