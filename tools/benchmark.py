"""Training throughput of a model: images/s, step and compile time, FLOPs, MFU.

  python tools/benchmark.py --model resnet50 --batch-size 32 --image-size 128 \
      [--dtype bfloat16] [--steps 10] [--no-trainer] [--compare-torch]

Prints one JSON line. `trainer_over_bare_step` is the full trainer loop's
throughput (synthetic data, prefetch, metrics, checkpoints) over the bare jitted
step's; `jax_over_torch` compares with torchvision's ResNet-50 (channels_last)
trained in the same process on the same batch shape.
"""

import argparse
import json
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--batch-size", type=int, required=True)
  parser.add_argument("--image-size", type=int, required=True)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--no-trainer", action="store_true", help="skip the full-loop measurement")
  parser.add_argument("--compare-torch", action="store_true",
                      help="also time torchvision ResNet-50 on the CPU")
  args = parser.parse_args(argv)
  if args.compare_torch:
    # torchvision crashes if imported after TensorFlow (loaded by the trainer's writers).
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    import torchvision  # pylint: disable=import-outside-toplevel,unused-import
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.train import benchmark  # pylint: disable=import-outside-toplevel
  try:
    models.model_info(args.model)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  result = benchmark.run(args.model, args.batch_size, args.image_size, args.dtype, args.steps,
                         trainer=not args.no_trainer, compare_torch=args.compare_torch)
  print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
