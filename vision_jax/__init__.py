"""vision_jax: image recognition in JAX/Flax."""

from vision_jax import console as _console

__version__ = "0.1.0"

# Before anything imports TensorFlow: its native start-up lines go to the log file, not the
# console (see vision_jax/console.py; --verbose keeps them).
_console.quiet_native_startup()
