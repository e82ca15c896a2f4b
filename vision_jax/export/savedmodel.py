"""TF SavedModel through jax2tf's native serialization (the program embedded as StableHLO).

jax2tf without native serialization is deprecated, and native serialization is
what the TensorFlow and JAX guides now use for serving JAX models from TF. The
weights are TF variables (not constants of the program), so the SavedModel's
variables/ holds them as checkpoint shards and the graph stays small.

Two signatures:
  * `serving_default`: `images`, uint8 [N, H, W, 3] of any size (one size per
    batch) -> `logits` [N, classes]. It runs the model's own evaluation
    preprocessing (the project's op string, the same TF ops `tools/predict.py`
    runs on decoded images: resize, crop, value range, normalisation) on each
    image, so a client sends pixels, not model inputs.
  * `logits`: `inputs`, float32 [N, H, W, C] already preprocessed -> `logits`
    (what TFLite conversion and the parity tests use).
"""

from __future__ import annotations

from vision_jax.export.core import Exportable

SERVING_SIGNATURE = "serving_default"
LOGITS_SIGNATURE = "logits"


def build_module(exportable: Exportable, batch_size: int | None = None):
  """A tf.Module with the variables and the two tf.functions (see the module docstring).

  Args:
    batch_size: None keeps the batch dimension symbolic (the SavedModel); a number
      fixes it, and the module then has only `logits` (TFLite: with every shape
      static the converter folds BatchNorm into the convolutions and leaves out
      the shape arithmetic of a symbolic batch, 3x faster on EfficientNet-B0).
  """
  # pylint: disable=import-outside-toplevel
  import jax
  import tensorflow as tf
  from jax.experimental import jax2tf
  from vision_jax.data import ops

  leaves, treedef = jax.tree_util.tree_flatten(exportable.variables)
  h, w, c = exportable.input_shape

  def forward(flat, images):
    return exportable.forward(jax.tree_util.tree_unflatten(treedef, flat), images)

  polymorphic = None if batch_size else [None, f"(b, {h}, {w}, {c})"]
  tf_forward = jax2tf.convert(forward, polymorphic_shapes=polymorphic, with_gradient=False)
  preprocess = ops.get_preprocess_fn(exportable.preprocess, outputs=("image",))
  module = tf.Module()
  module.weights = [tf.Variable(leaf, trainable=False) for leaf in leaves]

  @tf.function(input_signature=[tf.TensorSpec([batch_size, h, w, c], tf.float32,
                                               name="inputs")], autograph=False)
  def logits(inputs):
    return {"logits": tf_forward(module.weights, inputs)}

  module.logits = logits
  if batch_size:
    return module

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
               autograph=False)
  def serve(images):
    inputs = tf.map_fn(lambda image: tf.cast(preprocess({"image": image})["image"], tf.float32),
                       images, fn_output_signature=tf.TensorSpec([h, w, c], tf.float32))
    return {"logits": tf_forward(module.weights, inputs)}

  module.serve = serve
  return module


def write(exportable: Exportable, directory: str) -> dict:
  """Saves the SavedModel into `directory`; returns the metadata entries it adds."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  module = build_module(exportable)
  tf.saved_model.save(module, directory, signatures={
      SERVING_SIGNATURE: module.serve.get_concrete_function(),
      LOGITS_SIGNATURE: module.logits.get_concrete_function()})
  return {"signatures": {
      SERVING_SIGNATURE: {"input": "images: uint8 [N, H, W, 3], preprocessing included",
                          "output": "logits"},
      LOGITS_SIGNATURE: {"input": "inputs: float32 preprocessed [N, H, W, C]",
                         "output": "logits"}}}
