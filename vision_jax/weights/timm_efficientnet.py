"""timm -> vision_jax mapping for the efficientnet family (registers itself on import)."""
