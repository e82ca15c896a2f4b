"""Inference latency of the exported formats against the JAX model and timm, in one run.

For one registered model at one image size, with random weights (latency does
not depend on their values), each side below runs the same float32 batch:

  * jax           - the eval forward under `jax.jit` in this process (the model as trained);
  * stablehlo     - the `jax.export` artifact, deserialised and called under `jax.jit`;
  * savedmodel    - the SavedModel's `logits` signature (preprocessed float32 input);
  * tflite        - the float32 TFLite model in LiteRT's interpreter;
  * tflite-int8   - the int8 TFLite model (calibrated on random images: the ranges do
                    not change the speed);
  * onnx          - the ONNX model in onnxruntime's CPU session;
  * timm          - timm's model of the same architecture in PyTorch, eager, fp32;
  * timm-compiled - the same after `torch.compile` (inductor).

Every artifact is written through `vision_jax.export.export_model`, as `vj-export`
writes it, into a temporary directory. The runtimes get `threads` threads where they
take a number (PyTorch, onnxruntime, LiteRT); XLA uses the machine's cores. The sides
are timed in alternating rounds (`timing.alternate`), so that outside load hits them
alike; a row gives each side's median milliseconds per batch and its ratio to timm
eager (above 1: faster than timm).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vision_jax.bench import timing

SIDES = ("jax", "stablehlo", "savedmodel", "tflite", "tflite-int8", "onnx", "timm",
         "timm-compiled")


class LatencyError(ValueError):
  """An unknown side or model; the message names it and the choices."""


def check_sides(sides: Sequence[str]) -> list[str]:
  unknown = [s for s in sides if s not in SIDES]
  if unknown or not sides:
    raise LatencyError(f"unknown side {unknown[0] if unknown else '(none)'!r}; choose from "
                       f"{', '.join(SIDES)}.")
  return list(sides)


def exportable_for(model_name: str, image_size: int, seed: int = 0, **overrides: Any):
  """An `export.Exportable` of `model_name` with random (jitted-init) weights."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from vision_jax import models
  from vision_jax.export import core
  info = models.model_info(model_name)
  module = models.create_model(model_name, **overrides)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.jit(lambda key: module.init(key, x, train=False))(jax.random.key(seed))
  classes = [f"class_{i}" for i in range(module.num_classes)]
  return core.Exportable(module, variables, info.family, model_name,
                         (image_size, image_size, 3),
                         f"decode|resize({image_size})|value_range(0, 1)", classes)


def _calibration_folder(directory: str, image_size: int, count: int = 8) -> str:
  """A folder of random PNGs for tflite-int8 (its ranges do not change the latency)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  folder = os.path.join(directory, "calibration")
  if os.path.isdir(folder):  # made for an earlier batch size
    return folder
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  for i in range(count):
    pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
  return folder


def _runner(side: str, exportable, directory: str, threads: int,
            batch: np.ndarray) -> Callable[[], Any]:
  """A call that runs `batch` through `side` and returns once the logits exist.

  The artifact is written into `directory` on the first call for a side and read
  back on the later ones (other batch sizes: the batch is symbolic in every format).
  """
  # pylint: disable=import-outside-toplevel
  from vision_jax import export
  from vision_jax.export import check, core
  if side == "jax":
    import jax
    forward = jax.jit(exportable.closed_forward())
    return lambda: forward(batch).block_until_ready()
  # TFLite models have a fixed batch: one per batch size; the other formats' is symbolic.
  out = os.path.join(directory, f"{side}-b{len(batch)}" if side.startswith("tflite") else side)
  if not os.path.exists(out):
    calibration = (_calibration_folder(directory, exportable.input_shape[0])
                   if side == "tflite-int8" else None)
    export.export_model(exportable, side, out, calibration=calibration,
                        tflite_batch_size=len(batch))
  meta = core.read_metadata(out)
  inputs = batch
  if side == "savedmodel":  # converted once, outside the timed call
    import tensorflow as tf
    inputs = tf.constant(batch)
  run = check.runner(side, out, meta.get("artifact", ""), threads=threads)  # loaded once
  return lambda: run(inputs)


def _timm_runner(model_name: str, image_size: int, threads: int, batch: np.ndarray,
                 compiled: bool) -> Callable[[], Any]:
  from vision_jax.bench import trials  # pylint: disable=import-outside-toplevel
  torch, _ = trials.import_torch_and_timm()
  torch.set_num_threads(threads)
  model = trials.create_timm_model(model_name, image_size).eval()
  channels_last = trials.is_convolutional(model_name)
  inputs = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    inputs = inputs.contiguous(memory_format=torch.channels_last)
  if compiled:
    model = torch.compile(model)

  def run():
    with torch.inference_mode():
      return model(inputs)

  return run


def measure(model_name: str, image_size: int, batch_sizes: Sequence[int], sides: Sequence[str],
            rounds: int = 5, threads: int | None = None, warmup: int = 2,
            **overrides: Any) -> Iterator[dict[str, Any]]:
  """One row per batch size, as each is done: {side}_ms (median per batch), {side}_over_timm.

  Each artifact is written once; every batch size reuses it (the batch is symbolic
  in every format).
  """
  sides = check_sides(sides)
  threads = threads or os.cpu_count() or 1
  if any(s.startswith("timm") for s in sides):
    # pylint: disable=import-outside-toplevel
    from vision_jax.bench import trials
    trials.import_torch_and_timm()  # before TensorFlow (see trials.import_torch_and_timm)
  exportable = exportable_for(model_name, image_size, **overrides)
  with tempfile.TemporaryDirectory() as directory:
    for batch_size in batch_sizes:
      batch = np.random.default_rng(batch_size).standard_normal(
          (batch_size, image_size, image_size, 3)).astype(np.float32)
      calls = {}
      for side in sides:
        if side.startswith("timm"):
          calls[side] = _timm_runner(model_name, image_size, threads, batch,
                                     compiled=side == "timm-compiled")
        else:
          calls[side] = _runner(side, exportable, directory, threads, batch)
      medians = timing.medians(timing.alternate(calls, rounds, warmup=warmup))
      row: dict[str, Any] = {"model": model_name, "image_size": image_size,
                             "batch_size": batch_size, "threads": threads, "rounds": rounds}
      for side in sides:
        row[f"{side}_ms"] = 1000.0 * medians[side]
      if "timm" in medians:
        for side in sides:
          if side != "timm":
            row[f"{side}_over_timm"] = medians["timm"] / medians[side]
      yield row
