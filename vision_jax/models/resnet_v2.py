"""resnet_v2 family."""
