"""One door for every format: check the pair, stage the directory, write, run it once, rename."""

from __future__ import annotations

from vision_jax.export import core
from vision_jax.export.core import Exportable, ExportError
from vision_jax.export.tflite import check_int8_io

# (format, family) pairs that a converter cannot represent, with the reason: refused with
# one line before anything is written. Found by exporting a tiny model of each family and
# comparing the runtime's logits with JAX's; none is left (ONNX's ResNet one was worked
# around in export/onnx.py), and a converter release that breaks a family goes here.
UNSUPPORTED: dict[tuple[str, str], str] = {}

NEEDS_CALIBRATION = ("--format tflite-int8 needs --calibration FOLDER: images like the ones the "
                     "model will see, to measure the activation ranges.")


def check_supported(fmt: str, family: str) -> None:
  """Raises ExportError for an unknown format or a pair in `UNSUPPORTED`."""
  if fmt not in core.FORMATS:
    raise ExportError(f"--format {fmt}: not one of {', '.join(core.FORMATS)}.")
  reason = UNSUPPORTED.get((fmt, family))
  if reason:
    raise ExportError(f"--format {fmt} cannot represent the {family} family: {reason}.")


def export_model(exportable: Exportable, fmt: str, out: str, calibration: str | None = None,
                 overwrite: bool = False, calibration_limit: int = 200,
                 tflite_batch_size: int = 1, check: bool = True,
                 tflite_int8_io: str = "float32") -> dict:
  """Writes `exportable` as `fmt` into the directory `out`; returns export.json's contents.

  Args:
    exportable: the model (`core.from_loaded(inference.load_model(...))`).
    fmt: one of `core.FORMATS`.
    out: the artifact directory; it appears only once complete.
    calibration: a folder of images, required by (and only used for) tflite-int8.
    overwrite: replace an existing `out`.
    calibration_limit: at most this many calibration images are read.
    tflite_batch_size: the TFLite model's fixed batch size (tflite, tflite-int8).
    tflite_int8_io: the int8 TFLite model's input and output type: float32, int8 or uint8
      (tflite.INT8_IO; the float model refuses integers).
    check: run the written artifact in its runtime and compare it with the JAX model before
      putting it in place (export/check.py); export.json records the result under `check`.

  Raises:
    ExportError: an unknown format, an unsupported format/family pair, a missing or
      empty calibration folder, integer I/O asked of a float format, an existing `out`,
      a converter that failed on the model (its first line is kept), or a failed check:
      the runtime cannot run what was written, or a float format's logits differ from
      JAX's by more than check.TOLERANCE.
  """
  # pylint: disable=import-outside-toplevel
  check_supported(fmt, exportable.family)
  check_int8_io(fmt, tflite_int8_io)
  images = None
  if fmt == "tflite-int8":
    if not calibration:
      raise ExportError(NEEDS_CALIBRATION)
    images = core.calibration_images(calibration, exportable, calibration_limit)
  with core.staged_directory(out, overwrite) as stage:
    try:
      if fmt == "stablehlo":
        from vision_jax.export import stablehlo
        extra = stablehlo.write(exportable, stage)
      elif fmt == "savedmodel":
        from vision_jax.export import savedmodel
        extra = savedmodel.write(exportable, stage)
      elif fmt in ("tflite", "tflite-int8"):
        from vision_jax.export import tflite
        extra = tflite.write(exportable, stage, images, tflite_batch_size, tflite_int8_io)
      else:
        from vision_jax.export import onnx
        extra = onnx.write(exportable, stage)
    except ExportError:
      raise
    except Exception as e:  # a converter's own error: one line, naming the pair
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise ExportError(f"--format {fmt} failed on the {exportable.family} model "
                        f"{exportable.model_name}: {type(e).__name__}: {first}") from e
    if check:
      from vision_jax.export import check as check_lib
      extra["check"] = check_lib.check(fmt, exportable, stage, extra.get("artifact", ""), images)
    meta = exportable.metadata(fmt, **extra)
    if extra.get("batch_size"):  # a fixed batch (TFLite) instead of the symbolic one
      meta["input"]["shape"][0] = meta["output"]["shape"][0] = extra["batch_size"]
    if extra.get("integer_io"):  # int8 TFLite taking and giving quantized integers
      meta["input"]["dtype"] = meta["output"]["dtype"] = extra["integer_io"]
    core.write_metadata(stage, meta)
  return meta
