"""TFLite (LiteRT) flatbuffers, float32 or int8, converted from the jax2tf program.

The TFLite converter legalizes the StableHLO that jax2tf's native serialization
embeds into TFLite builtin ops; the float model keeps float32 weights and
activations. `int8` is full-integer post-training quantization: weights per
channel, activations per tensor with ranges measured on a representative
dataset (the model inputs of a folder of calibration images, read with the
model's own preprocessing), builtin int8 kernels only, so a model that needs a
float fallback fails to convert instead of running half in float. By default
the model's input and output stay float32 (a quantize op at the entry, a
dequantize at the exit), so the same preprocessing feeds both variants;
`io="int8"` or `"uint8"` (`--tflite-int8-io`) removes those two ops, for
runtimes that take integers only (microcontrollers, some NPU delegates): the
input is then the preprocessed image quantized with the input tensor's scale and
zero point (real = (q - zero_point) * scale, both in export.json and the model)
and the logits come out quantized the same way. `run` and `runner` quantize and
dequantize for the caller, so they take and give float32 for every variant.

The input takes the preprocessed float32 [B, H, W, C] of export.json, B fixed
at export (`--tflite-batch-size`, default 1: the latency case); `run` takes
any number of images, B at a time.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable

import numpy as np

from vision_jax.export.core import Exportable, ExportError

ARTIFACT = "model.tflite"
# The int8 model's input and output type: float32 (quantize/dequantize inside), or integers.
INT8_IO = ("float32", "int8", "uint8")


def convert(exportable: Exportable, calibration: np.ndarray | None = None,
            batch_size: int | None = 1, io: str = "float32") -> bytes:
  """The flatbuffer: float32 when `calibration` is None, else int8 calibrated on it.

  `io` is the int8 model's input and output type (INT8_IO); a float model takes float32.

  The batch size is fixed (`batch_size`; None: symbolic): with a symbolic batch every broadcast
  becomes a BROADCAST_TO of a computed shape and BatchNorm stays unfolded, and
  the float model ran 3x slower (EfficientNet-B0 at 224, batch 1). `run` feeds
  any number of images through it in chunks.
  """
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from vision_jax.export import savedmodel
  from vision_jax.export.core import linen_replaced
  from vision_jax.models import depthwise
  if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
    raise ExportError(f"--tflite-batch-size {batch_size!r}: give a whole number >= 1.")
  check_int8_io("tflite-int8" if calibration is not None else "tflite", io)
  module = savedmodel.build_module(exportable, batch_size=batch_size)
  # Depthwise convolutions as grouped convolutions, which become TFLite's DepthwiseConv2D,
  # not as the k * k shifted slices that suit XLA:CPU (models/depthwise.py).
  edge_padded = lambda original: functools.partial(max_pool_edge_padded, pool=original)  # noqa: E731
  with contextlib.ExitStack() as stack:
    stack.enter_context(depthwise.use_impl("xla"))
    stack.enter_context(linen_replaced("max_pool", edge_padded))
    stack.enter_context(linen_replaced("Dense", dense_on_rows))  # ConvNeXt's fixed batch
    if calibration is not None:
      stack.enter_context(linen_replaced("gelu", gelu_tanh))
    concrete = module.logits.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
  if calibration is not None:
    images = np.asarray(calibration, np.float32)

    rows = batch_size or 1

    def representative():
      for start in range(0, len(images), rows):
        yield [_padded(images[start:start + rows], rows)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float32":
      converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
  return converter.convert()


def check_int8_io(fmt: str, io: str) -> None:
  """ExportError for an unknown --tflite-int8-io, or integer I/O asked of another format."""
  if io not in INT8_IO:
    raise ExportError(f"--tflite-int8-io {io}: not one of {', '.join(INT8_IO)}.")
  if io != "float32" and fmt != "tflite-int8":
    raise ExportError(f"--tflite-int8-io {io} applies to --format tflite-int8 only; the other "
                      "formats take and give float32.")


def dense_on_rows(original: type) -> type:
  """`flax.linen.Dense` that applies itself to a (rows, features) matrix: the same parameters
  and outputs, but a rank-4 input no longer becomes a rank-4 batch matmul.

  TF 2.20's converter cannot legalise that batch matmul with a fixed batch
  (ConvNeXt's MLP runs on the NHWC map); a 2-D one becomes FULLY_CONNECTED.
  """

  class DenseOnRows(original):  # pylint: disable=too-few-public-methods

    def __call__(self, inputs):
      if inputs.ndim <= 2:
        return super().__call__(inputs)
      lead = inputs.shape[:-1]
      out = super().__call__(inputs.reshape((-1, inputs.shape[-1])))
      return out.reshape(lead + out.shape[-1:])

  DenseOnRows.__name__ = original.__name__
  return DenseOnRows


def gelu_tanh(original: Callable) -> Callable:
  """`flax.linen.gelu` that always takes the tanh approximation (the int8 model's GELU).

  The exact GELU's erf lowers, for large |x|, to an expansion that divides by
  x * x; int8 rounds small x * x to zero and LiteRT's int8 DIV refuses a zero
  divisor ("div.cc: data[i] != zero_point": ConvNeXt and ViT failed to run).
  The tanh form differs from the exact one by under 1e-3, far below int8's
  rounding of the activations.
  """
  return lambda x, approximate=True: original(x, approximate=True)


def max_pool_edge_padded(inputs, window_shape, strides=None, padding="VALID", *, pool=None):
  """`flax.linen.max_pool` (or `pool`) with the padding made of edge copies instead of -inf.

  Exact whenever each side's padding is smaller than the window (every padded
  position's window then holds the edge pixel it copies). The int8 TFLite model
  of a -inf pad has a PADV2 that LiteRT's XNNPACK delegate refuses to prepare
  (ResNet's stem: "failed to create XNNPACK runtime").
  """
  # pylint: disable=import-outside-toplevel
  import flax.linen
  import jax.numpy as jnp
  from vision_jax.export.core import pool_pad_widths
  pool = pool or flax.linen.max_pool
  window = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window)
  widths, spatial = pool_pad_widths(inputs, window, strides, padding)
  if any(max(widths[a]) >= k for a, k in zip(spatial, window)):
    return pool(inputs, window_shape, strides, padding)
  return pool(jnp.pad(inputs, widths, mode="edge"), window_shape, strides, "VALID")


def _padded(images: np.ndarray, rows: int) -> np.ndarray:
  """`images` with copies of its last row appended up to `rows` rows."""
  if len(images) == rows:
    return images
  return np.concatenate([images, np.repeat(images[-1:], rows - len(images), axis=0)])


def write(exportable: Exportable, directory: str,
          calibration: np.ndarray | None = None, batch_size: int = 1,
          io: str = "float32") -> dict:
  """Writes `model.tflite` into `directory`; returns the metadata entries it adds."""
  meta = {"artifact": ARTIFACT, "weights": "float32" if calibration is None else "int8",
          "batch_size": batch_size}
  if calibration is not None:
    meta["gelu"] = "tanh approximation (int8 has no exact erf; see tflite.gelu_tanh)"
  flatbuffer = convert(exportable, calibration, batch_size, io)
  path = os.path.join(directory, ARTIFACT)
  with open(path, "wb") as f:
    f.write(flatbuffer)
  if calibration is not None:
    meta.update({"activations": "int8", "calibration_images": int(len(calibration)),
                 "input_output": "float32 (quantized and dequantized inside the model)"})
    if io != "float32":
      meta.update(_integer_io(path, io))
  return meta


def _integer_io(path: str, io: str) -> dict:
  """export.json's entries for integer I/O: the dtype and the quantization of each end."""
  interp = interpreter(path)
  quant = lambda detail: {"scale": float(detail["quantization"][0]),  # noqa: E731
                          "zero_point": int(detail["quantization"][1])}
  entry, exit_ = interp.get_input_details()[0], interp.get_output_details()[0]
  return {"input_output": f"{io}: real = (q - zero_point) * scale",
          "input_quantization": quant(entry), "output_quantization": quant(exit_),
          "integer_io": io}


def interpreter(path: str, num_threads: int | None = None):
  """A LiteRT interpreter of `path` (ai-edge-litert, else TensorFlow's own)."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  except ImportError:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  return Interpreter(model_path=path, num_threads=num_threads)


def runner(interp) -> Callable[[np.ndarray], np.ndarray]:
  """A function of a float32 batch of any size: the model's fixed batch at a time.

  An integer-I/O model's input is quantized and its logits dequantized here, so the
  function takes and gives float32 for every variant.
  """
  signature = interp.get_signature_runner()
  name, detail = next(iter(signature.get_input_details().items()))
  out_detail = signature.get_output_details()["logits"]
  symbolic = int(detail["shape_signature"][0]) == -1

  def call(batch: np.ndarray) -> np.ndarray:
    return _dequantized(signature(**{name: _quantized(batch, detail)})["logits"], out_detail)

  def run_all(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if symbolic:  # the runner resizes the input to the batch
      return call(images)
    rows = int(detail["shape"][0])
    out = [call(_padded(images[i:i + rows], rows)) for i in range(0, len(images), rows)]
    return np.concatenate(out)[:len(images)]

  return run_all


def _quantized(images: np.ndarray, detail: dict) -> np.ndarray:
  """`images` as the input tensor's type: float32 as is, integers by its scale and zero point."""
  dtype = np.dtype(detail["dtype"])
  if dtype == np.float32:
    return images
  scale, zero_point = detail["quantization"]
  info = np.iinfo(dtype)
  return np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantized(logits, detail: dict) -> np.ndarray:
  logits = np.asarray(logits)
  if logits.dtype == np.float32:
    return logits
  scale, zero_point = detail["quantization"]
  return ((logits.astype(np.float32) - zero_point) * scale).astype(np.float32)


def run(interp, images: np.ndarray) -> np.ndarray:
  """Logits of a float32 batch of any size through an interpreter from `interpreter`."""
  return runner(interp)(images)
