"""resnet family."""
