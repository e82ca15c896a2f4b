"""Depthwise convolution: shifted multiply-adds against XLA's grouped convolution, in one run.

  python tools/benchmark_depthwise.py [--models efficientnet_b0,convnext_tiny] \
      [--batch-size 16] [--image-size 128] [--rounds 3] [--whole-model] \
      [--no-timm] [--torch-threads 1]

Part 1 (always): every distinct depthwise convolution of each model at the given
batch and image size (found by tracing the model), both paths of
vision_jax.models.depthwise compiled, then timed forward and forward+backward in
alternating rounds. One JSON line per shape with the milliseconds of each path and
`*_xla_over_shifted` (above 1: the shifted path is faster).

Part 2 (--whole-model): each model's inference (eval forward) and training step
(SGD, plain jax.jit) with the depthwise path forced to 'xla' (before) and
'shifted' (after), and timm's model of the same architecture (fp32, channels_last,
--torch-threads threads, eager) in the same alternating rounds. One JSON line per
model and mode with images/s, `shifted_over_xla` and `*_over_timm`.
"""

from __future__ import annotations

import argparse
import json

from vision_jax.cli import common


def _rounded(row: dict) -> dict:
  return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="efficientnet_b0,convnext_tiny",
                      help="comma-separated registered models with depthwise convolutions")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--image-size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating timing rounds; the median round counts")
  parser.add_argument("--calls", type=int, default=3, help="calls per round, per shape")
  parser.add_argument("--whole-model", action="store_true",
                      help="also time each whole model before/after, and timm")
  parser.add_argument("--no-timm", action="store_true", help="leave timm out of --whole-model")
  parser.add_argument("--torch-threads", type=int, default=1)
  args = parser.parse_args(argv)
  names = [n for n in args.models.split(",") if n]
  if args.batch_size < 1 or args.image_size < 16 or args.rounds < 1 or args.calls < 1:
    raise common.CommandLineError(
        "--batch-size, --rounds and --calls must be at least 1 and --image-size at least 16.")
  # pylint: disable=import-outside-toplevel
  if args.whole_model and not args.no_timm:
    from vision_jax.bench import trials
    trials.import_torch_and_timm()  # before TensorFlow can be loaded; see trials
  from vision_jax.bench import depthwise as bench

  shapes: dict = {}
  for name in names:
    found = bench.model_depthwise_shapes(name, args.batch_size, args.image_size)
    if not found:
      raise common.CommandLineError(f"--models: {name} has no depthwise convolution; name a "
                                    "model that has one (efficientnet_b0, convnext_tiny).")
    for shape, count in found.items():
      shapes.setdefault(shape, []).append(f"{name} x{count}")
  for shape, row in zip(shapes, bench.time_shapes(list(shapes), args.rounds, args.calls)):
    print(json.dumps(_rounded({**row, "used_by": ", ".join(shapes[shape])})), flush=True)
  if args.whole_model:
    for row in bench.time_models(names, args.batch_size, args.image_size, args.rounds,
                                 timm=not args.no_timm, torch_threads=args.torch_threads):
      print(json.dumps(_rounded(row)), flush=True)
  return 0


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
