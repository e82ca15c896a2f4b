"""timm -> vision_jax mapping for the resnet family (registers itself on import)."""
