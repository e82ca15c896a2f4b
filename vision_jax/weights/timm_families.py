"""Imports every family's timm mapping so that each registers itself."""

from vision_jax.weights import timm_convnext  # noqa: F401
from vision_jax.weights import timm_efficientnet  # noqa: F401
from vision_jax.weights import timm_resnet  # noqa: F401
from vision_jax.weights import timm_resnet_v2  # noqa: F401
from vision_jax.weights import timm_vgg  # noqa: F401
from vision_jax.weights import timm_vit  # noqa: F401
