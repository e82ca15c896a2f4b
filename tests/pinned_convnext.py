"""Pinned parameter counts (1000 classes) of the convnext family.

Each is the count of the timm model of the same name (timm 1.0.31, quoted in issue 10).
"""

PARAM_COUNTS = {
    "convnext_atto": 3_695_520,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}
