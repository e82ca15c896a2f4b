"""Exports a trained run or converted weights to StableHLO, SavedModel, TFLite or ONNX.

  python tools/export.py --workdir /tmp/digits --format stablehlo --out export/digits_shlo
  python tools/export.py --weights timm:resnet50.a1_in1k --format savedmodel --out export/r50
  python tools/export.py --workdir /tmp/digits --format tflite-int8 --calibration calib/ \
      --out export/digits_int8

--out is a directory: the model file(s) and export.json (input shape and layout,
the preprocessing op string, mean/std, class names). It appears only when the
export is complete. Formats: stablehlo (jax.export, reloadable with plain jax),
savedmodel (serving signature on uint8 images, preprocessing included), tflite,
tflite-int8 (post-training quantization from --calibration, a folder of images)
and onnx (jax2onnx). docs/export.md says what each holds and how to run it.
"""

from __future__ import annotations

import argparse
import sys

from vision_jax.cli import common


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  common.add_model_args(parser)
  parser.add_argument("--format", required=True,
                      help="stablehlo, savedmodel, tflite, tflite-int8 or onnx")
  parser.add_argument("--out", required=True, help="the artifact directory to write")
  parser.add_argument("--calibration", help="tflite-int8: a folder of calibration images")
  parser.add_argument("--calibration-limit", type=int, default=200,
                      help="tflite-int8: read at most this many calibration images")
  parser.add_argument("--tflite-batch-size", type=int, default=1,
                      help="tflite, tflite-int8: the model's fixed batch size (default 1)")
  parser.add_argument("--tflite-int8-io", default="float32",
                      help="tflite-int8: the model's input and output type; int8/uint8 drop the "
                           "quantize and dequantize ops (integer-only runtimes), default float32")
  parser.add_argument("--no-check", action="store_true",
                      help="do not run the written model in its runtime and compare its logits "
                           "with JAX's before keeping it (export.json's `check`)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)

  # pylint: disable=import-outside-toplevel
  from vision_jax import export, inference
  if args.format not in export.FORMATS:
    return common.report(f"--format {args.format}: not one of {', '.join(export.FORMATS)}.")
  if args.tflite_batch_size < 1:
    return common.report(f"--tflite-batch-size {args.tflite_batch_size}: give a whole number "
                         ">= 1.")
  try:
    model = inference.load_model(args.workdir, args.weights)
    # The cheap checks first: reading the input shape below starts TensorFlow.
    export.check_supported(args.format, export.family_of(model.module))
    export.check_int8_io(args.format, args.tflite_int8_io)
    if args.format == "tflite-int8":
      if not args.calibration:
        raise export.ExportError(export.NEEDS_CALIBRATION)
      export.calibration_files(args.calibration, args.calibration_limit)
    exportable = export.from_loaded(model)
    meta = export.export_model(exportable, args.format, args.out, args.calibration,
                               args.overwrite, args.calibration_limit,
                               tflite_batch_size=args.tflite_batch_size,
                               check=not args.no_check, tflite_int8_io=args.tflite_int8_io)
  except (inference.LoadError, export.ExportError) as e:
    return common.report(" ".join(str(e).split()))  # one line
  print(f"wrote {args.format} of {meta['model']} ({meta['family']}, input "
        f"{meta['input']['shape']}) to {args.out}{_checked(meta.get('check'))}", file=sys.stderr)
  return 0


def _checked(result) -> str:
  """'; checked with <runtime>: ...' for the line that reports the export."""
  if not result:
    return " (not run: --no-check)"
  said = f"; {result['runtime']} ran it on {result['images']} {result['inputs']}: "
  if "top1_agreement" in result:
    return said + (f"top-1 agreement with JAX {100 * result['top1_agreement']:.1f}%, "
                   f"logit correlation {result['correlation']:.4f}")
  return said + f"logits within {result['max_relative_error']:.1e} relative of JAX's"


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
