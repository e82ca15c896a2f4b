"""vision_jax: image recognition in JAX/Flax."""

__version__ = "0.1.0"
