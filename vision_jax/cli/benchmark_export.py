"""Inference latency of the exported formats against JAX and timm, in one run.

  python tools/benchmark_export.py --model resnet50 [--image-size 224] \
      [--batch-sizes 1,32] [--sides jax,stablehlo,savedmodel,tflite,tflite-int8,onnx,timm,timm-compiled] \
      [--rounds 5] [--threads N]

Writes each format with random weights into a temporary directory (as vj-export
does), then times every side on the same float32 batch in alternating rounds
(vision_jax/bench/export_latency.py). One JSON line per batch size: each side's
median milliseconds per batch (`<side>_ms`) and its speed relative to timm eager
(`<side>_over_timm`, above 1: faster). Quote the ratios: they come from one run.
"""

from __future__ import annotations

import argparse
import json

from vision_jax.cli import common


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="a registered model name")
  parser.add_argument("--image-size", type=int, default=None,
                      help="input side (default: the model's registered size)")
  parser.add_argument("--batch-sizes", default="1,32")
  parser.add_argument("--sides", default="jax,stablehlo,savedmodel,tflite,tflite-int8,onnx,"
                      "timm,timm-compiled")
  parser.add_argument("--rounds", type=int, default=5,
                      help="alternating timing rounds; the median round counts")
  parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
  parser.add_argument("--threads", type=int, default=None,
                      help="threads of PyTorch, onnxruntime and LiteRT (default: all cores)")
  args = parser.parse_args(argv)
  # pylint: disable=import-outside-toplevel
  from vision_jax import models
  from vision_jax.bench import export_latency
  try:
    info = models.model_info(args.model)
    sides = export_latency.check_sides([s for s in args.sides.split(",") if s])
  except ValueError as e:
    raise common.CommandLineError(str(e)) from None
  try:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
  except ValueError:
    raise common.CommandLineError(f"--batch-sizes {args.batch_sizes!r}: give whole numbers "
                                  "separated by commas, e.g. 1,32.") from None
  if not batch_sizes or min(batch_sizes) < 1 or args.rounds < 1 or args.warmup < 0:
    raise common.CommandLineError("--batch-sizes and --rounds must be at least 1, --warmup at "
                                  "least 0.")
  size = args.image_size or info.input_size
  for row in export_latency.measure(args.model, size, batch_sizes, sides, rounds=args.rounds,
                                    threads=args.threads, warmup=args.warmup):
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                      for k, v in row.items()}), flush=True)
  return 0


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
