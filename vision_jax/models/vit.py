"""vit family."""
