"""What every export format shares: the model as a pure function, its input, the metadata.

An exported model leaves this package behind, so each artifact directory carries
`export.json` beside the model: the input layout and shape (NHWC float32 after
preprocessing, the batch size free), the output (logits), the preprocessing op
string with its mean and std, the class names and the versions that wrote it. A
serving signature that takes raw uint8 images (SavedModel) applies that
preprocessing itself; the other formats take the preprocessed input, and the
metadata says how to make it.

Every format is written into a temporary directory beside the destination and
renamed into place when it is complete, so a failed or interrupted export leaves
no half-written artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np

FORMATS = ("stablehlo", "savedmodel", "tflite", "tflite-int8", "onnx")
METADATA_FILE = "export.json"


class ExportError(ValueError):
  """A model, format or input that cannot be exported; the message names it and says why."""


@dataclasses.dataclass
class Exportable:
  """A classifier reduced to what an exporter needs.

  Attributes:
    module: the flax module (eval mode is applied by `forward`).
    variables: its variables.
    family: the model family ("resnet", "vit", ...), for messages and the support table.
    model_name: the registered name, or the module's class name.
    input_shape: (height, width, channels) of one preprocessed image.
    preprocess: the op string that turns an encoded or uint8 image into the model input.
    class_names: one name per class.
    mean: normalisation mean recorded for the consumer, or None.
    std: normalisation std, or None.
  """

  module: Any
  variables: Any
  family: str
  model_name: str
  input_shape: tuple[int, int, int]
  preprocess: str
  class_names: list[str]
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def forward(self, variables, images):
    """Logits of a float32 [N, H, W, C] batch, in eval mode (running BatchNorm statistics)."""
    return self.module.apply(variables, images, train=False)

  def closed_forward(self) -> Callable:
    """`forward` with the variables closed over: the weights become constants of the program."""
    variables = self.variables
    return lambda images: self.forward(variables, images)

  def metadata(self, fmt: str, **extra) -> dict[str, Any]:
    import jax  # pylint: disable=import-outside-toplevel
    h, w, c = self.input_shape
    meta = {
        "format": fmt,
        "model": self.model_name,
        "family": self.family,
        "input": {"layout": "NHWC", "dtype": "float32", "shape": ["batch", h, w, c],
                  "preprocess": self.preprocess, "mean": _list(self.mean),
                  "std": _list(self.std)},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", self.num_classes]},
        "class_names": list(self.class_names),
        "versions": {"jax": jax.__version__},
    }
    meta.update(extra)
    return meta


def _list(values):
  return None if values is None else [float(v) for v in values]


def from_loaded(loaded) -> Exportable:
  """An `Exportable` from `vision_jax.inference.load_model`'s result.

  The input shape is what the model's own preprocessing makes of an image, so it
  is read by running that op string once on a blank image.
  """
  return Exportable(module=loaded.module, variables=loaded.variables,
                    family=family_of(loaded.module), model_name=model_name_of(loaded.module),
                    input_shape=preprocessed_shape(loaded.preprocess),
                    preprocess=loaded.preprocess, class_names=list(loaded.class_names),
                    mean=loaded.mean, std=loaded.std)


def family_of(module) -> str:
  """The registry family of a module's class ("resnet", "vit", ...), from its defining file."""
  return type(module).__module__.rsplit(".", 1)[-1]


def model_name_of(module) -> str:
  return type(module).__name__


def preprocessed_shape(preprocess: str) -> tuple[int, int, int]:
  """(height, width, channels) of the model input that `preprocess` makes of an image."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from vision_jax.data import ops  # pylint: disable=import-outside-toplevel
  fn = ops.get_preprocess_fn(preprocess, outputs=("image",))
  image = fn({"image": tf.zeros([97, 89, 3], tf.uint8)})["image"]
  shape = tuple(int(s) for s in image.shape)
  if len(shape) != 3:
    raise ExportError(f"The preprocessing {preprocess!r} makes a {shape} array, not one "
                      "[height, width, channels] image; it cannot be exported.")
  return shape


def calibration_files(folder: str, limit: int = 200) -> list[str]:
  """Up to `limit` image files of a folder (searched recursively); no TensorFlow needed.

  Raises:
    ExportError: the folder does not exist or holds no image file.
  """
  from vision_jax import inference  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(folder):
    raise ExportError(f"--calibration {folder}: no such folder; give a folder of images like "
                      "the ones the model will see (100-200 are enough).")
  paths = inference.list_images([folder])[:limit]
  if not paths:
    raise ExportError(f"--calibration {folder}: no readable image ("
                      f"{'/'.join(inference.IMAGE_EXTENSIONS)}) in it; int8 quantization "
                      "needs example inputs: give a folder of images like the ones the model "
                      "will see.")
  return paths


def calibration_images(folder: str, exportable: Exportable, limit: int = 200) -> np.ndarray:
  """The model inputs of up to `limit` images of a folder, read with the model's preprocessing.

  Raises:
    ExportError: the folder does not exist or holds no readable image.
  """
  from vision_jax import inference  # pylint: disable=import-outside-toplevel
  _, images = inference.read_images(calibration_files(folder, limit), exportable.preprocess,
                                    warn=lambda m: None)
  if not len(images):  # pylint: disable=g-explicit-length-test
    raise ExportError(f"--calibration {folder}: none of its image files could be decoded; "
                      "give a folder of images like the ones the model will see.")
  return images


@contextlib.contextmanager
def staged_directory(out: str, overwrite: bool = False) -> Iterator[str]:
  """A temporary directory beside `out`, renamed to `out` when the block ends without error.

  Raises:
    ExportError: `out` exists and `overwrite` is false.
  """
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise ExportError(f"--out {out} exists; give another path or --overwrite.")
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
  try:
    yield stage
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  if os.path.exists(out):
    shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
  os.replace(stage, out)


def write_metadata(directory: str, meta: dict[str, Any]) -> None:
  with open(os.path.join(directory, METADATA_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")


def read_metadata(directory: str) -> dict[str, Any]:
  with open(os.path.join(directory, METADATA_FILE), encoding="utf-8") as f:
    return json.load(f)


# --- max-pooling as a converter can take it (ONNX, TFLite) ---------------------------------


def pool_pad_widths(inputs, window: tuple[int, ...], strides: tuple[int, ...],
                    padding) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
  """(jnp.pad widths of every axis, the spatial axes) of a flax pool over (batch..., spatial...,
  features) with `padding` 'SAME', 'VALID' or explicit pairs."""
  import jax  # pylint: disable=import-outside-toplevel
  spatial = tuple(range(inputs.ndim - 1 - len(window), inputs.ndim - 1))
  shape = [inputs.shape[a] for a in spatial]
  pads = (jax.lax.padtype_to_pads(shape, window, strides, padding) if isinstance(padding, str)
          else [tuple(p) for p in padding])
  widths = [(0, 0)] * inputs.ndim
  for axis, pad in zip(spatial, pads):
    widths[axis] = tuple(pad)
  return widths, spatial


@contextlib.contextmanager
def linen_replaced(name: str, make: Callable[[Callable], Callable]) -> Iterator[None]:
  """While open, `flax.linen.<name>` is `make(the original)` for every model that calls it.

  Models call `nn.max_pool` and `nn.gelu` through the module at run time, so a
  trace inside the block sees the replacement (the ONNX and TFLite work-arounds).
  """
  import flax.linen  # pylint: disable=import-outside-toplevel
  original = getattr(flax.linen, name)
  setattr(flax.linen, name, make(original))
  try:
    yield
  finally:
    setattr(flax.linen, name, original)
