"""Converts a foreign checkpoint into a vision_jax orbax checkpoint plus metadata JSON.

  python tools/convert_weights.py --from timm --model resnet50 \
      --input resnet50.safetensors --output /tmp/resnet50_vj

The output directory can then be named as `init_from` in a training config.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--from", dest="source", required=True, choices=["timm"],
                      help="format of the input checkpoint")
  parser.add_argument("--model", required=True, help="timm model name, e.g. vit_base_patch16_224")
  parser.add_argument("--input", required=True, help=".safetensors file (or a .pth/.bin torch state dict)")
  parser.add_argument("--output", required=True, help="directory to create")
  args = parser.parse_args(argv)

  if not os.path.isfile(args.input):
    print(f"error: input file {args.input} does not exist", file=sys.stderr)
    return 2
  from vision_jax.weights import WeightLoadError, from_timm  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io  # pylint: disable=import-outside-toplevel
  from vision_jax.weights.timm import resolve  # pylint: disable=import-outside-toplevel

  state_dict = _read_state_dict(args.input)
  try:
    module, variables = from_timm(args.model, state_dict)
    model_name, _, overrides = resolve(args.model, state_dict)
  except WeightLoadError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    out = io.save_converted(args.output, variables, model_name, module.num_classes, overrides,
                            source=f"timm:{args.model} from {os.path.abspath(args.input)}")
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out} ({model_name}, num_classes={module.num_classes})")
  return 0


def _read_state_dict(path: str):
  import numpy as np  # pylint: disable=import-outside-toplevel
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return load_file(path)
  import torch  # pylint: disable=import-outside-toplevel
  sd = torch.load(path, map_location="cpu", weights_only=True)
  sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
  return {k: np.asarray(v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy())
          for k, v in sd.items()}


if __name__ == "__main__":
  sys.exit(main())
