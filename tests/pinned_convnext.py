"""Pinned parameter counts (1000 classes) of the convnext family.

Each is the count of the timm model of the same name (timm 1.0.31, quoted in issue 10; the
ConvNeXt V2 counts from timm.create_model(name, pretrained=False) and summing its parameters,
issue 24).
"""

PARAM_COUNTS = {
    "convnext_atto": 3_695_520,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "convnextv2_atto": 3_708_400,
    "convnextv2_femto": 5_233_240,
    "convnextv2_pico": 9_066_280,
    "convnextv2_nano": 15_623_800,
    "convnextv2_tiny": 28_635_496,
    "convnextv2_base": 88_717_800,
    "convnextv2_large": 197_956_840,
    "convnextv2_huge": 660_289_640,
}
