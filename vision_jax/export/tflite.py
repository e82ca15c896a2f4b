"""TFLite (LiteRT) flatbuffers, float32 or int8, converted from the jax2tf program.

The TFLite converter legalizes the StableHLO that jax2tf's native serialization
embeds into TFLite builtin ops; the float model keeps float32 weights and
activations. `int8` is full-integer post-training quantization: weights per
channel, activations per tensor with ranges measured on a representative
dataset (the model inputs of a folder of calibration images, read with the
model's own preprocessing), builtin int8 kernels only, so a model that needs a
float fallback fails to convert instead of running half in float. The model's
input and output stay float32 (a quantize op at the entry, a dequantize at the
exit), so the same preprocessing feeds both variants.

The input takes the preprocessed float32 [N, H, W, C] of export.json; the batch
dimension is resizable (`interpreter.resize_tensor_input`, or the signature
runner, which resizes itself).
"""

from __future__ import annotations

import os

import numpy as np

from vision_jax.export.core import Exportable

ARTIFACT = "model.tflite"


def convert(exportable: Exportable, calibration: np.ndarray | None = None) -> bytes:
  """The flatbuffer: float32 when `calibration` is None, else int8 calibrated on it."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from vision_jax.export import savedmodel
  from vision_jax.models import depthwise
  module = savedmodel.build_module(exportable)
  # Depthwise convolutions as grouped convolutions, which become TFLite's DepthwiseConv2D,
  # not as the k * k shifted slices that suit XLA:CPU (models/depthwise.py).
  with depthwise.use_impl("xla"):
    concrete = module.logits.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
  if calibration is not None:
    images = np.asarray(calibration, np.float32)

    def representative():
      for i in range(len(images)):
        yield [images[i:i + 1]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return converter.convert()


def write(exportable: Exportable, directory: str,
          calibration: np.ndarray | None = None) -> dict:
  """Writes `model.tflite` into `directory`; returns the metadata entries it adds."""
  with open(os.path.join(directory, ARTIFACT), "wb") as f:
    f.write(convert(exportable, calibration))
  meta = {"artifact": ARTIFACT, "weights": "float32" if calibration is None else "int8"}
  if calibration is not None:
    meta.update({"activations": "int8", "calibration_images": int(len(calibration)),
                 "input_output": "float32 (quantized and dequantized inside the model)"})
  return meta


def interpreter(path: str, num_threads: int | None = None):
  """A LiteRT interpreter of `path` (ai-edge-litert, else TensorFlow's own)."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  except ImportError:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  return Interpreter(model_path=path, num_threads=num_threads)


def run(interp, images: np.ndarray) -> np.ndarray:
  """Logits of a float32 batch through an interpreter from `interpreter` (resized to the batch)."""
  runner = interp.get_signature_runner()
  name = next(iter(runner.get_input_details()))
  return np.asarray(runner(**{name: np.asarray(images, np.float32)})["logits"])
