"""Pinned parameter counts (1000 classes) of the maxvit and coatnet families.

Each equals the count of timm 1.0.31's model of the same name built with
num_classes=1000 (checked by hand, tools-free: `sum(p.numel() for p in
timm.create_model(name).parameters())`). timm builds maxvit_xlarge_tf_224 with its
ImageNet-21k head by default (506_987_643 parameters); with 1000 classes it is the
count below.
"""

PARAM_COUNTS = {
    "maxvit_tiny_tf_224": 30_916_528,
    "maxvit_tiny_tf_384": 30_977_008,
    "maxvit_tiny_tf_512": 31_049_584,
    "maxvit_small_tf_224": 68_927_956,
    "maxvit_small_tf_384": 69_018_676,
    "maxvit_small_tf_512": 69_127_540,
    "maxvit_base_tf_224": 119_467_708,
    "maxvit_base_tf_384": 119_653_468,
    "maxvit_base_tf_512": 119_876_380,
    "maxvit_large_tf_224": 211_785_560,
    "maxvit_large_tf_384": 212_033_240,
    "maxvit_large_tf_512": 212_330_456,
    "maxvit_xlarge_tf_224": 474_951_952,
    "maxvit_xlarge_tf_384": 475_323_472,
    "maxvit_xlarge_tf_512": 475_769_296,
    "coatnet_0_224": 25_036_820,
    "coatnet_1_224": 42_225_776,
    "coatnet_2_224": 74_684_744,
    "coatnet_3_224": 166_966_264,
    "coatnet_nano_rw_224": 15_141_244,
    "coatnet_0_rw_224": 27_435_562,
    "coatnet_1_rw_224": 41_721_502,
    "coatnet_2_rw_224": 73_868_400,
    "coatnet_bn_0_rw_224": 27_435_562,
}
