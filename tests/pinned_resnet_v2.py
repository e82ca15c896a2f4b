"""Pinned parameter counts (1000 classes) of the resnet_v2 family.

Each number was measured from timm (`timm.create_model(name)` on the meta
device, sum of the parameters' numel) for the timm model of the same name.
"""

PARAM_COUNTS = {
    "resnetv2_50x1_bit": 25_549_352,    # timm resnetv2_50x1_bit
    "resnetv2_50x3_bit": 217_319_080,   # timm resnetv2_50x3_bit
    "resnetv2_101x1_bit": 44_541_480,   # timm resnetv2_101x1_bit
    "resnetv2_101x3_bit": 387_934_888,  # timm resnetv2_101x3_bit
    "resnetv2_152x2_bit": 236_335_208,  # timm resnetv2_152x2_bit
    "resnetv2_152x4_bit": 936_533_224,  # timm resnetv2_152x4_bit
}
