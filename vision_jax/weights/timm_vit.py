"""timm -> vision_jax mapping for the vit family (registers itself on import)."""
