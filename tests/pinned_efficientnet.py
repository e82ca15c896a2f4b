"""Pinned parameter counts (1000 classes) of the efficientnet family.

Each number was measured from timm 1.0.31 (`timm.create_model(name)` on the meta
device, sum of the parameters' numel) for the timm model named in the comment;
timm's `efficientnet_bN` (PyTorch padding) has the same count as `tf_efficientnet_bN`.
"""

PARAM_COUNTS = {
    "efficientnet_b0": 5_288_548,   # timm tf_efficientnet_b0
    "efficientnet_b1": 7_794_184,   # timm tf_efficientnet_b1
    "efficientnet_b2": 9_109_994,   # timm tf_efficientnet_b2
    "efficientnet_b3": 12_233_232,  # timm tf_efficientnet_b3
    "efficientnet_b4": 19_341_616,  # timm tf_efficientnet_b4
    "efficientnet_b5": 30_389_784,  # timm tf_efficientnet_b5
    "efficientnet_b6": 43_040_704,  # timm tf_efficientnet_b6
    "efficientnet_b7": 66_347_960,  # timm tf_efficientnet_b7
}
