"""Pinned parameter counts (1000 classes) of the efficientnetv2 family.

Each number was measured from timm 1.0.31 (`timm.create_model(name)` on the meta
device, sum of the parameters' numel) for the timm model named in the comment
(tests/test_efficientnetv2.py checks them against timm again).
"""

PARAM_COUNTS = {
    "efficientnetv2_b0": 7_139_704,      # timm tf_efficientnetv2_b0
    "efficientnetv2_b1": 8_141_052,      # timm tf_efficientnetv2_b1
    "efficientnetv2_b2": 10_096_086,     # timm tf_efficientnetv2_b2
    "efficientnetv2_b3": 14_358_406,     # timm tf_efficientnetv2_b3
    "efficientnetv2_s": 21_458_488,      # timm tf_efficientnetv2_s
    "efficientnetv2_m": 54_139_356,      # timm tf_efficientnetv2_m
    "efficientnetv2_l": 118_515_272,     # timm tf_efficientnetv2_l
    "efficientnetv2_xl": 208_119_808,    # timm tf_efficientnetv2_xl
    "efficientnetv2_rw_t": 13_649_388,   # timm efficientnetv2_rw_t
    "efficientnetv2_rw_s": 23_941_296,   # timm efficientnetv2_rw_s
    "efficientnetv2_rw_m": 53_236_442,   # timm efficientnetv2_rw_m
}
