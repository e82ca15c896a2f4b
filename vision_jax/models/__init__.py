"""The model zoo: `create_model(name)`, `list_models()`, `model_info(name)`."""

from vision_jax.models.registry import (ModelError, ModelInfo, create_model, list_models, model_info,
                                        register_model)

# Importing a family registers its variants.
from vision_jax.models import convnext  # noqa: F401,E402
from vision_jax.models import efficientnet  # noqa: F401,E402
from vision_jax.models import efficientnetv2  # noqa: F401,E402
from vision_jax.models import maxxvit  # noqa: F401,E402
from vision_jax.models import resnet  # noqa: F401,E402
from vision_jax.models import resnet_v2  # noqa: F401,E402
from vision_jax.models import vgg  # noqa: F401,E402
from vision_jax.models import vit  # noqa: F401,E402

__all__ = ["ModelError", "ModelInfo", "create_model", "list_models", "model_info", "register_model"]
