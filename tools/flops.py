"""Prints the FLOPs per image of a registered model as one JSON line.

  python tools/flops.py --model resnet50 [--image-size 224] [--train]

FLOPs come from XLA's cost analysis of the lowered program (a multiply-add
counts two); nothing is allocated, so the largest variants work on a laptop.
"""

import argparse
import json
import sys

from vision_jax.cli.common import run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--image-size", type=int, default=None)
  parser.add_argument("--train", action="store_true", help="count forward + backward")
  args = parser.parse_args(argv)
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.models.flops import count_flops  # pylint: disable=import-outside-toplevel
  try:
    info = models.model_info(args.model)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  size = args.image_size or info.input_size
  # Models built for one input size (ViTs, MaxViT, CoAtNet: position tables, windows) are
  # built for the asked size; the others take any.
  fields = models.create_model(args.model).__dataclass_fields__
  sized = size != info.input_size and "img_size" in fields
  f = count_flops(args.model, image_size=size, train=args.train,
                  **({"img_size": size} if sized else {}))
  print(json.dumps({"model": args.model, "image_size": size, "train": args.train,
                    "gflops_per_image": round(f / 1e9, 4)}))
  return 0


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
