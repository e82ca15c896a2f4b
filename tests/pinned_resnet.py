"""Pinned parameter counts (1000 classes) of the resnet family.

ImageNet variants: the count of the timm model of the same name, measured with
`with torch.device('meta'): timm.create_model(name)` (timm 1.0.31) and summing
the parameters' numel. CIFAR variants have no timm counterpart: their counts are
those of our implementation (tests/test_resnet.py checks them by hand for 10 classes).
"""

PARAM_COUNTS = {
    "resnet18": 11_689_512,    # timm resnet18
    "resnet34": 21_797_672,    # timm resnet34
    "resnet50": 25_557_032,    # timm resnet50
    "resnet101": 44_549_160,   # timm resnet101
    "resnet152": 60_192_808,   # timm resnet152
    "resnet200": 64_673_832,   # timm resnet200
    "cifar_resnet20": 336_824,  # no timm model; ours (272_474 with 10 classes)
    "cifar_resnet32": 531_256,  # no timm model; ours (466_906 with 10 classes)
    "cifar_resnet56": 920_120,  # no timm model; ours (855_770 with 10 classes)
}
