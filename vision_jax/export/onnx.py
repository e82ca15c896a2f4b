"""ONNX through jax2onnx, which converts the traced JAX program (linen modules included).

tf2onnx cannot read jax2tf's native serialization (an XlaCallModule op holding
StableHLO), so the route through TF is closed; jax2onnx walks the jaxpr of the
eval forward and emits ONNX ops primitive by primitive, the batch dimension
symbolic ("batch"). The weights are initializers of the graph. The input is the
preprocessed float32 [N, H, W, C] of export.json (NHWC, as the JAX model takes it).

jax2onnx also swaps some flax.linen functions and layers for shortcuts of its own
while it traces. Those shortcuts lag behind linen: its `max_pool` takes the window
only as a keyword and padding only as a string (our stems pass explicit pairs),
and its strided convolution gave a graph that onnxruntime rejected (cifar_resnet20,
jax2onnx 0.17.1); its `avg_pool` takes the window only as a keyword too (MaxViT's and
CoAtNet's downsampling pool). `plain_lax_tracing` turns these off (max_pool, avg_pool,
pool, conv), so they
trace to the lax primitives JAX itself runs (conv_general_dilated, dot_general ...),
which jax2onnx converts one by one. Two more work-arounds make the ResNet family
convert (jax2onnx 0.17.1): max-pooling is traced as a maximum of strided slices
(`max_pool_by_slices`; its reduce_window rule gives a MaxPool over all four NHWC
axes, which onnxruntime refuses), and the graph's intermediate shape annotations,
some of them NHWC for tensors its layout pass keeps NCHW, are dropped. Every
family of tests/test_export.py then matches JAX.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from vision_jax.export.core import Exportable

ARTIFACT = "model.onnx"
# jax2onnx's linen shortcuts that `plain_lax_tracing` turns off.
_LAGGING_SHORTCUTS = tuple(f"jax2onnx.plugins.flax.linen.{name}"
                           for name in ("max_pool", "avg_pool", "pool", "conv"))
OPSET = 23


def convert(exportable: Exportable):
  """The onnx.ModelProto of the eval forward."""
  from jax2onnx import to_onnx  # pylint: disable=import-outside-toplevel
  from vision_jax.models import depthwise  # pylint: disable=import-outside-toplevel
  # Depthwise convolutions as grouped Conv nodes (onnxruntime's depthwise kernel), not as the
  # k * k shifted slices that suit XLA:CPU (models/depthwise.py; docs/export.md).
  # jax2onnx logs through the root logger's module functions, whose first call runs
  # logging.basicConfig: a StreamHandler on the root logger that outlived the export and
  # changed how a later run in the same process logged. Handlers it adds are removed.
  with plain_lax_tracing(), depthwise.use_impl("xla"), _root_handlers_kept():
    proto = to_onnx(exportable.closed_forward(), [("batch", *exportable.input_shape)],
                    model_name=exportable.model_name, opset=OPSET, input_names=["inputs"],
                    output_names=["logits"])
  # The intermediate shape annotations are optional hints, and jax2onnx 0.17.1 writes some
  # in NHWC for tensors that its layout pass left in NCHW: onnxruntime then rejects a
  # residual Add of cifar_resnet20 ("Incompatible dimensions"). It infers them itself.
  del proto.graph.value_info[:]
  return proto


def max_pool_by_slices(inputs, window_shape, strides=None, padding="VALID"):
  """`flax.linen.max_pool` as the maximum of strided slices of the -inf padded input.

  The same numbers as `lax.reduce_window` (max is exact), in ops that jax2onnx
  converts to Pad, Slice and Max: its reduce_window rule emits a MaxPool over all
  four NHWC axes (kernel [1, 3, 3, 1]), which onnxruntime refuses ("Unsupported
  pooling size"). Inputs are (batch..., spatial..., features), as flax's.
  """
  # pylint: disable=import-outside-toplevel
  import itertools

  import jax.numpy as jnp
  from vision_jax.export.core import pool_pad_widths
  window = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window)
  widths, spatial = pool_pad_widths(inputs, window, strides, padding)
  x = jnp.pad(inputs, widths, constant_values=-jnp.inf)
  out = [(x.shape[a] - k) // s + 1 for a, k, s in zip(spatial, window, strides)]
  result = None
  for offsets in itertools.product(*(range(k) for k in window)):
    index = [slice(None)] * inputs.ndim
    for axis, offset, stride, n in zip(spatial, offsets, strides, out):
      index[axis] = slice(offset, offset + stride * (n - 1) + 1, stride)
    piece = x[tuple(index)]
    result = piece if result is None else jnp.maximum(result, piece)
  return result


@contextlib.contextmanager
def _root_handlers_kept() -> Iterator[None]:
  """Removes the root-logger handlers added inside the block."""
  handlers = list(logging.root.handlers)
  try:
    yield
  finally:
    for handler in [h for h in logging.root.handlers if h not in handlers]:
      logging.root.removeHandler(handler)


@contextlib.contextmanager
def plain_lax_tracing() -> Iterator[None]:
  """Turns off jax2onnx's flax.linen shortcuts for the block (see the module docstring),
  and traces `flax.linen.max_pool` as `max_pool_by_slices`."""
  # pylint: disable=import-outside-toplevel
  from jax2onnx.plugins import plugin_system
  from vision_jax.export.core import linen_replaced
  plugin_system.import_all_plugins()
  linen = [type(p) for p in plugin_system.PLUGIN_REGISTRY.values()
           if type(p).__module__ in _LAGGING_SHORTCUTS]
  saved = [(cls, cls.__dict__.get("binding_specs")) for cls in linen]
  for cls in linen:
    cls.binding_specs = classmethod(lambda cls: [])
  try:
    with linen_replaced("max_pool", lambda original: max_pool_by_slices):
      yield
  finally:
    for cls, spec in saved:
      if spec is None:
        del cls.binding_specs
      else:
        cls.binding_specs = spec


def write(exportable: Exportable, directory: str) -> dict:
  """Writes `model.onnx` into `directory`; returns the metadata entries it adds."""
  import onnx  # pylint: disable=import-outside-toplevel
  proto = convert(exportable)
  onnx.save_model(proto, os.path.join(directory, ARTIFACT))
  return {"artifact": ARTIFACT, "opset": OPSET, "converter": "jax2onnx"}


def session(path: str, threads: int | None = None):
  """An onnxruntime CPU session of `path`."""
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
  return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(sess, images):
  return sess.run(["logits"], {"inputs": images})[0]
