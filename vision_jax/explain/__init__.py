"""Why did the model decide? Attribution maps as batched, jitted JAX functions.

Every method is called as `fn(module, variables, images, targets=None, ...)` on
[N, H, W, C] model inputs and returns float32 maps [N, h, w]; `upsample=True`
gives [N, H, W], resized bilinearly and min-max normalised per image.
`targets=None` explains the predicted class. `input_window`, `map_to_photo`,
`orient` and `photo_overlay` put a map back on the photograph the input was cut
from. See docs/explain.md.
"""

from vision_jax.explain.cam import grad_cam, grad_cam_plus_plus
from vision_jax.explain.gradients import (IntegratedGradients, gaussian_blur, input_gradients,
                                          integrated_gradients, quadrature, smooth_grad)
from vision_jax.explain.layers import ExplainError, available_layers, default_layer
from vision_jax.explain.overlay import (InputWindow, PlacementError, heatmap_to_rgb, input_window,
                                        map_to_photo, orient, overlay, photo_overlay, read_photo,
                                        to_uint8_image)
from vision_jax.explain.rollout import attention_maps, attention_rollout

METHODS = {
    "gradcam": grad_cam,
    "gradcam++": grad_cam_plus_plus,
    "ig": integrated_gradients,
    "smoothgrad": smooth_grad,
    "saliency": input_gradients,
    "rollout": attention_rollout,
}

__all__ = [
    "ExplainError", "InputWindow", "IntegratedGradients", "METHODS", "PlacementError",
    "attention_maps", "attention_rollout", "available_layers", "default_layer", "gaussian_blur",
    "grad_cam", "grad_cam_plus_plus", "heatmap_to_rgb", "input_gradients", "input_window",
    "integrated_gradients", "map_to_photo", "orient", "overlay", "photo_overlay", "quadrature",
    "read_photo", "smooth_grad", "to_uint8_image",
]
