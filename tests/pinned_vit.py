"""Parameter counts (1000 classes) of every registered vit-family model.

Each number was measured from timm 1.0.31 as
  with torch.device('meta'): m = timm.create_model(<timm name>, num_classes=1000)
  sum(p.numel() for p in m.parameters())
for the timm name in the comment (the same architecture as ours). num_classes=1000
is explicit: timm builds vit_large_patch32_224 and vit_base_r50_s16_224 headless by
default (their default weights, orig_in21k, have no classifier).
"""

PARAM_COUNTS = {
    "vit_base_patch16_224": 86_567_656,  # timm vit_base_patch16_224
    "vit_base_patch16_384": 86_859_496,  # timm vit_base_patch16_384
    "vit_base_patch14_dinov2": 87_348_712,  # timm vit_base_patch14_dinov2
    "vit_base_patch14_reg4_dinov2": 87_351_016,  # timm vit_base_patch14_reg4_dinov2
    "vit_base_patch32_224": 88_224_232,  # timm vit_base_patch32_224
    "vit_base_patch32_384": 88_297_192,  # timm vit_base_patch32_384
    "vit_base_r26_s32_224": 101_383_976,  # timm vit_base_r26_s32_224
    "vit_base_r50_s16_224": 98_659_112,  # timm vit_base_r50_s16_224
    "vit_base_r50_s16_384": 98_950_952,  # timm vit_base_r50_s16_384
    "vit_large_patch14_dinov2": 305_392_616,  # timm vit_large_patch14_dinov2
    "vit_large_patch14_reg4_dinov2": 305_395_688,  # timm vit_large_patch14_reg4_dinov2
    "vit_large_patch16_224": 304_326_632,  # timm vit_large_patch16_224
    "vit_large_patch16_384": 304_715_752,  # timm vit_large_patch16_384
    "vit_large_patch32_224": 306_535_400,  # timm vit_large_patch32_224
    "vit_large_patch32_384": 306_632_680,  # timm vit_large_patch32_384
    "vit_large_r50_s32_224": 328_994_856,  # timm vit_large_r50_s32_224
    "vit_large_r50_s32_384": 329_092_136,  # timm vit_large_r50_s32_384
    "vit_small_patch14_dinov2": 22_441_192,  # timm vit_small_patch14_dinov2
    "vit_small_patch14_reg4_dinov2": 22_442_344,  # timm vit_small_patch14_reg4_dinov2
    "vit_small_patch16_224": 22_050_664,  # timm vit_small_patch16_224
    "vit_small_patch16_384": 22_196_584,  # timm vit_small_patch16_384
    "vit_small_patch32_224": 22_878_952,  # timm vit_small_patch32_224
    "vit_small_patch32_384": 22_915_432,  # timm vit_small_patch32_384
    "vit_small_r26_s32_224": 36_431_912,  # timm vit_small_r26_s32_224
    "vit_small_r26_s32_384": 36_468_392,  # timm vit_small_r26_s32_384
    "vit_tiny_patch16_224": 5_717_416,  # timm vit_tiny_patch16_224
    "vit_tiny_patch16_384": 5_790_376,  # timm vit_tiny_patch16_384
    "vit_tiny_r_s16_p8_224": 6_337_704,  # timm vit_tiny_r_s16_p8_224
    "vit_tiny_r_s16_p8_384": 6_355_944,  # timm vit_tiny_r_s16_p8_384
}
