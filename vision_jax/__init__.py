"""vision_jax: image recognition in JAX/Flax.

`vision_jax.pretrained("resnet50.a1_in1k")` loads pretrained weights by name (see
`vision_jax.weights.hub`); it is imported on first use, so `import vision_jax`
stays light (no JAX, no TensorFlow).
"""

from vision_jax import console as _console
from vision_jax import startup as _startup

__version__ = "0.1.0"

# Before anything imports TensorFlow: its native start-up lines go to the log file, not the
# console (see vision_jax/console.py; --verbose keeps them).
_console.quiet_native_startup()
# Nor does TensorFlow or TensorBoard load Keras, which nothing here uses (vision_jax/startup.py).
_startup.defer_keras()


def __getattr__(name: str):
  if name == "pretrained":
    from vision_jax.weights.hub import pretrained  # pylint: disable=import-outside-toplevel
    return pretrained
  raise AttributeError(f"module 'vision_jax' has no attribute {name!r}")
