"""timm -> vision_jax mapping for the resnet_v2 family (registers itself on import)."""
