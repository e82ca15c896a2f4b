"""Preprocessing ops, composed by strings: "decode|inception_crop(224)|flip_lr|value_range(-1,1)".

Importing this package registers every op. See `registry` for the string syntax
and the seed discipline, and docs/data.md for the list of ops.
"""

import tensorflow as tf

# tf.data runs on the host; keep TensorFlow off any accelerator JAX uses.
try:
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU")
except (RuntimeError, ValueError):  # devices already initialised, or no such device type
  pass

# pylint: disable=g-import-not-at-top,wrong-import-position
# Importing the op modules registers their ops.
from vision_jax.data.ops import autoaugment, erasing, geometry, simclr, values  # noqa: F401
from vision_jax.data.ops import timm_resize  # noqa: F401
from vision_jax.data.ops.registry import (Preprocess, build_op, describe_ops, get_preprocess_fn,
                                          parse, register, registered_ops)

__all__ = ["Preprocess", "build_op", "describe_ops", "get_preprocess_fn", "parse", "register",
           "registered_ops"]
