"""Why did the model decide? Attribution maps as batched, jitted JAX functions.

Every method is called as `fn(module, variables, images, targets=None, ...)` on
[N, H, W, C] model inputs and returns float32 maps [N, h, w]; `upsample=True`
gives [N, H, W], resized bilinearly and min-max normalised per image.
`targets=None` explains the predicted class. `input_window`, `map_to_photo`,
`orient` and `photo_overlay` put a map back on the photograph the input was cut
from. See docs/explain.md.
"""

from vision_jax.explain.cam import (eigen_cam, grad_cam, grad_cam_plus_plus, hires_cam, layer_cam,
                                    score_cam, xgrad_cam)
from vision_jax.explain.gradients import (IntegratedGradients, gaussian_blur, input_gradients,
                                          integrated_gradients, quadrature, smooth_grad)
from vision_jax.explain.guided_ig import GuidedIG, guided_integrated_gradients
from vision_jax.explain.layers import ExplainError, available_layers, default_layer
from vision_jax.explain.overlay import (InputWindow, PlacementError, heatmap_to_rgb, input_window,
                                        map_to_photo, orient, overlay, photo_overlay, read_photo,
                                        to_uint8_image)
from vision_jax.explain.perturbation import occlusion, rise
from vision_jax.explain.rollout import attention_maps, attention_rollout

METHODS = {
    "gradcam": grad_cam,
    "gradcam++": grad_cam_plus_plus,
    "xgradcam": xgrad_cam,
    "layercam": layer_cam,
    "hirescam": hires_cam,
    "eigencam": eigen_cam,
    "scorecam": score_cam,
    "ig": integrated_gradients,
    "guided-ig": guided_integrated_gradients,
    "smoothgrad": smooth_grad,
    "saliency": input_gradients,
    "rollout": attention_rollout,
    "occlusion": occlusion,
    "rise": rise,
}

# The methods that read a layer (`layer=`): any family with a feature map or tokens.
LAYER_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam",
                 "scorecam")

__all__ = [
    "ExplainError", "GuidedIG", "InputWindow", "IntegratedGradients", "LAYER_METHODS", "METHODS",
    "PlacementError", "attention_maps", "attention_rollout", "available_layers", "default_layer",
    "eigen_cam", "gaussian_blur", "grad_cam", "grad_cam_plus_plus", "guided_integrated_gradients",
    "heatmap_to_rgb", "hires_cam", "input_gradients", "input_window", "integrated_gradients",
    "layer_cam", "map_to_photo", "occlusion", "orient", "overlay", "photo_overlay", "quadrature",
    "read_photo", "rise", "score_cam", "smooth_grad", "to_uint8_image", "xgrad_cam",
]
