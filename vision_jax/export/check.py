"""Every artifact runs once in its own runtime before it is put in place.

A converter that succeeds does not promise a runtime that runs its output: the
TFLite converter writes VGG's model at 32 px, which LiteRT then refuses to
prepare ("transpose.cc: perm 4 != dims 2"). So `export_model` loads what it
wrote with the runtime a user will load it with (plain `jax.export`,
TensorFlow's SavedModel loader, LiteRT, onnxruntime), feeds it a few inputs and
compares the logits with the JAX model's:

* float formats must agree within `TOLERANCE` relative (the largest absolute
  difference over the largest absolute JAX logit), else the export is refused;
* int8 TFLite is measured, not refused: its top-1 agreement with JAX and the
  correlation of the logits go into export.json (a tiny or untrained model can
  disagree legitimately; a trained one is checked by the tests), unless it
  gives NaN or infinity.

The inputs are the calibration images when there are some (the int8 case),
else `RANDOM_IMAGES` standard-normal images: enough to catch a model that does
not run or computes something else, cheap next to the conversion.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from vision_jax.export.core import Exportable, ExportError

TOLERANCE = 1e-4
RANDOM_IMAGES = 2
# The int8 check reads at most this many calibration images (its batches are small).
INT8_IMAGES = 32

# format -> the runtime that loads it (for messages and export.json).
RUNTIMES = {"stablehlo": "jax.export", "savedmodel": "tensorflow", "tflite": "litert",
            "tflite-int8": "litert", "onnx": "onnxruntime"}


def inputs_for(exportable: Exportable, calibration: np.ndarray | None) -> np.ndarray:
  """The images the check feeds: calibration images if given, else seeded random ones."""
  if calibration is not None:
    return np.asarray(calibration[:INT8_IMAGES], np.float32)
  rng = np.random.default_rng(0)
  return rng.standard_normal((RANDOM_IMAGES,) + tuple(exportable.input_shape)).astype(np.float32)


def runner(fmt: str, directory: str, artifact: str,
           threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  """A function of a float32 batch (or a tf.Tensor, for savedmodel): the artifact's logits,
  loaded once, as a user loads it. Also the latency benchmark's loader (bench/export_latency).

  Args:
    fmt: one of core.FORMATS.
    directory: the artifact directory (what savedmodel loads).
    artifact: the model file's name in it (export.json's `artifact`).
    threads: intra-op threads of LiteRT and onnxruntime (None: their default).
  """
  # pylint: disable=import-outside-toplevel
  path = os.path.join(directory, artifact)
  if fmt == "stablehlo":
    import jax
    with open(path, "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    call = jax.jit(exported.call)
    return lambda x: np.asarray(call(x))
  if fmt == "savedmodel":
    import tensorflow as tf
    signature = tf.saved_model.load(directory).signatures["logits"]
    return lambda x: np.asarray(signature(inputs=tf.constant(x))["logits"])
  if fmt in ("tflite", "tflite-int8"):
    from vision_jax.export import tflite
    return tflite.runner(tflite.interpreter(path, num_threads=threads))
  from vision_jax.export import onnx
  try:
    session = onnx.session(path, threads=threads)
  except ImportError as e:
    raise ExportError("running the ONNX model needs onnxruntime: pip install -e '.[export]' "
                      "(or skip the export's check with --no-check).") from e
  return lambda x: np.asarray(onnx.run(session, x))


def check(fmt: str, exportable: Exportable, directory: str, artifact: str,
          calibration: np.ndarray | None = None) -> dict:
  """Runs the artifact in `directory` and compares it with the JAX model; export.json's `check`.

  Args:
    fmt: one of core.FORMATS.
    exportable: the model that was exported.
    directory: where the artifact was written.
    artifact: its file name (for savedmodel the directory itself is loaded).
    calibration: the int8 calibration inputs, also used as the check's inputs.

  Raises:
    ExportError: the runtime cannot load or run the artifact, a float format's logits differ
      from JAX's by more than TOLERANCE, or the logits are not finite.
  """
  import jax  # pylint: disable=import-outside-toplevel
  # On the CPU, where the exported programs are meant to run (stablehlo's platform is "cpu").
  with jax.default_device(jax.devices("cpu")[0]):
    return _check(fmt, exportable, directory, artifact, calibration)


def _check(fmt, exportable, directory, artifact, calibration) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  runtime = RUNTIMES[fmt]
  x = inputs_for(exportable, calibration)
  try:
    got = runner(fmt, directory, artifact)(x)
  except ExportError:
    raise
  except Exception as e:  # the runtime's own refusal: one line, naming it
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise ExportError(f"--format {fmt}: the converter wrote the {exportable.family} model, but "
                      f"{runtime} cannot run it ({type(e).__name__}: {first}). Nothing was "
                      "written; another input size or format may work (docs/export.md).") from e
  want = np.asarray(jax.jit(exportable.closed_forward())(x))
  if got.shape != want.shape:
    raise ExportError(f"--format {fmt}: {runtime} gives logits of shape {got.shape}, the JAX "
                      f"model {want.shape}; the export is wrong and was not kept.")
  if not np.isfinite(got).all():
    raise ExportError(f"--format {fmt}: {runtime} gives NaN or infinite logits on "
                      f"{len(x)} inputs where the JAX model gives finite ones; not kept.")
  scale = float(np.abs(want).max()) or 1.0
  relative = float(np.abs(got - want).max()) / scale
  result = {"runtime": runtime, "images": int(len(x)),
            "inputs": "calibration images" if calibration is not None else "random normal",
            "max_relative_error": relative}
  if fmt == "tflite-int8":
    result["top1_agreement"] = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    result["correlation"] = float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
    return result
  if not relative <= TOLERANCE:
    raise ExportError(f"--format {fmt}: {runtime}'s logits differ from the JAX model's by "
                      f"{relative:.2e} relative (the limit is {TOLERANCE:.0e}); the converter "
                      "changed the model, so the export was not kept.")
  return result
