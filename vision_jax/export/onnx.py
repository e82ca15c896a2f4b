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
jax2onnx 0.17.1). `plain_lax_tracing` turns those three off (max_pool, pool, conv), so they
trace to the lax primitives JAX itself runs (conv_general_dilated, reduce_window,
dot_general ...), which jax2onnx converts one by one. ViT, EfficientNet, ConvNeXt,
ResNet-v2 and the hybrid ViT-R then match JAX; the ResNet family still gets mis-shaped
Conv/MaxPool nodes from jax2onnx 0.17.1 and is refused (`writer.UNSUPPORTED`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from vision_jax.export.core import Exportable

ARTIFACT = "model.onnx"
# jax2onnx's linen shortcuts that `plain_lax_tracing` turns off.
_LAGGING_SHORTCUTS = tuple(f"jax2onnx.plugins.flax.linen.{name}"
                           for name in ("max_pool", "pool", "conv"))
OPSET = 23


def convert(exportable: Exportable):
  """The onnx.ModelProto of the eval forward."""
  from jax2onnx import to_onnx  # pylint: disable=import-outside-toplevel
  with plain_lax_tracing():
    return to_onnx(exportable.closed_forward(), [("batch", *exportable.input_shape)],
                   model_name=exportable.model_name, opset=OPSET, input_names=["inputs"],
                   output_names=["logits"])


@contextlib.contextmanager
def plain_lax_tracing() -> Iterator[None]:
  """Turns off jax2onnx's flax.linen shortcuts for the block (see the module docstring)."""
  # pylint: disable=import-outside-toplevel
  from jax2onnx.plugins import plugin_system
  plugin_system.import_all_plugins()
  linen = [type(p) for p in plugin_system.PLUGIN_REGISTRY.values()
           if type(p).__module__ in _LAGGING_SHORTCUTS]
  saved = [(cls, cls.__dict__.get("binding_specs")) for cls in linen]
  for cls in linen:
    cls.binding_specs = classmethod(lambda cls: [])
  try:
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
