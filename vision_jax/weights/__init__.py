"""Import and export of foreign checkpoints (timm, torchvision, google-research .npz).

Every loader matches through `weights.core` and reports every mismatch in one
`WeightLoadError`. `pretrained(tag)` resolves a name (timm tag, torchvision weights,
.npz file) through the Hugging Face hub cache and caches the conversion (`weights.hub`).
"""

from vision_jax.weights.core import WeightLoadError
from vision_jax.weights.hub import Pretrained, PretrainedError, pretrained
from vision_jax.weights.npz import from_npz, to_npz
from vision_jax.weights.timm import from_timm
from vision_jax.weights.torchvision import from_torchvision

__all__ = ["Pretrained", "PretrainedError", "WeightLoadError", "from_npz", "from_timm",
           "from_torchvision", "pretrained", "to_npz"]
