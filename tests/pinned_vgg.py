"""Pinned parameter counts (1000 classes) of the vgg family.

Each is the count of the timm model of the same name (timm 1.0.31, quoted in issue 10;
torchvision's models of these names have the same counts: the first classifier layer is
timm's 7x7 conv or torchvision's Linear(25088, 4096), the same weights).
"""

PARAM_COUNTS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}
