"""Converts a foreign checkpoint into a vision_jax orbax checkpoint plus metadata JSON.

  python tools/convert_weights.py --weights timm:resnet50.a1_in1k --output /tmp/resnet50_vj
  python tools/convert_weights.py --from timm --model resnet50 \
      --input resnet50.safetensors --output /tmp/resnet50_vj

--weights takes any name `vision_jax.pretrained` takes (timm:TAG, hf-hub:ORG/REPO,
local-dir:/path, torchvision:NAME.WEIGHTS, npz:ARCH@/path.npz): the files come from
the Hugging Face hub cache (or torch's), and model.json records the checkpoint's
own preprocessing (config.json's pretrained_cfg). The output directory can then be
named as `init_from` in a training config (a tag works there directly, too).
Bad input prints one `error:` line, exits with 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os

from vision_jax.cli import common


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--weights", help="a pretrained name, e.g. timm:resnet50.a1_in1k "
                      "(instead of --from/--model/--input)")
  parser.add_argument("--from", dest="source", choices=["timm"],
                      help="format of the input checkpoint")
  parser.add_argument("--model", help="timm model name, e.g. vit_base_patch16_224")
  parser.add_argument("--input", help=".safetensors file (or a .pth/.bin torch state dict)")
  parser.add_argument("--output", required=True, help="directory to create")
  # The eval preprocessing the weights expect, recorded in model.json under "preprocess".
  # timm's pretrained config for --model fills them when timm is installed; flags win.
  parser.add_argument("--input-size", type=int, help="eval input side (default: timm's cfg)")
  parser.add_argument("--crop-pct", type=float, help="centre-crop fraction (default: timm's cfg)")
  parser.add_argument("--crop-mode", choices=["center", "squash"], help="default: timm's cfg")
  parser.add_argument("--interpolation", choices=["bicubic", "bilinear", "nearest"],
                      help="resize interpolation (default: timm's cfg)")
  parser.add_argument("--mean", type=float, nargs=3, help="per-channel mean (default: timm's cfg)")
  parser.add_argument("--std", type=float, nargs=3, help="per-channel std (default: timm's cfg)")
  args = parser.parse_args(argv)

  if args.weights:
    if args.input or args.model:
      parser.error("give either --weights or --from/--model/--input, not both")
    return _convert_pretrained(args)
  if not (args.source and args.model and args.input):
    parser.error("--from, --model and --input are required (or give --weights timm:TAG)")
  if not os.path.isfile(args.input):
    return common.report(f"input file {args.input} does not exist", common.EXIT_USAGE)
  from vision_jax.weights import WeightLoadError, from_timm  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io  # pylint: disable=import-outside-toplevel
  from vision_jax.weights.timm import resolve  # pylint: disable=import-outside-toplevel

  state_dict = _read_state_dict(args.input)
  try:
    module, variables = from_timm(args.model, state_dict)
    model_name, _, overrides = resolve(args.model, state_dict)
  except WeightLoadError as e:
    return common.report(e)
  try:
    out = io.save_converted(args.output, variables, model_name, module.num_classes, overrides,
                            source=f"timm:{args.model} from {os.path.abspath(args.input)}")
  except FileExistsError as e:
    return common.report(e)
  preprocess = preprocess_metadata(args, model_name)
  meta_path = os.path.join(out, io.METADATA_FILE)
  with open(meta_path) as f:
    meta = json.load(f)
  meta["preprocess"] = preprocess
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  print(f"wrote {out} ({model_name}, num_classes={module.num_classes}, preprocess={preprocess})")
  return 0


def _convert_pretrained(args) -> int:
  """--weights NAME: resolve through the hub cache, then write the converted directory."""
  from vision_jax.weights import WeightLoadError, hub, io  # pylint: disable=import-outside-toplevel
  target = os.path.join(os.path.abspath(args.output), io.VARIABLES_DIR)
  if os.path.exists(target):  # before any download or conversion
    return common.report(f"{target} already exists; choose another --output or remove it.")
  try:
    loaded = hub.pretrained(args.weights)
  except WeightLoadError as e:
    return common.report(e)
  preprocess = dict(loaded.preprocess_cfg, **{"from": loaded.metadata_from})
  for key in _PREPROCESS_KEYS:  # flags win, as for --input
    value = getattr(args, key)
    if value is not None:
      preprocess[key] = list(value) if isinstance(value, (list, tuple)) else value
      preprocess["from"] += " + flags"
  out = io.save_converted(args.output, loaded.variables, loaded.model_name, loaded.num_classes,
                          loaded.overrides, source=f"{loaded.source} (sha256 {loaded.sha256})")
  meta_path = os.path.join(out, io.METADATA_FILE)
  with open(meta_path) as f:
    meta = json.load(f)
  meta["preprocess"] = preprocess
  meta["class_names"] = loaded.class_names
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  print(f"wrote {out} ({loaded.model_name}, num_classes={loaded.num_classes}, from "
        f"{loaded.source}, preprocess={preprocess})")
  return 0


_PREPROCESS_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")


def preprocess_metadata(args, model_name: str) -> dict:
  """The checkpoint's eval preprocessing: timm's pretrained cfg for --model, then the flags.

  Without timm (or for a tag it does not know) the registry's ModelInfo gives the
  defaults.
  """
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  info = models.model_info(model_name)
  result = {"input_size": info.input_size, "crop_pct": info.crop_pct, "crop_mode": "center",
            "interpolation": getattr(info, "interpolation", "bicubic"), "mean": list(info.mean),
            "std": list(info.std), "from": "vision_jax registry"}
  try:
    import timm  # pylint: disable=import-outside-toplevel
    cfg = timm.models.get_pretrained_cfg(args.model)
    if cfg is not None:
      cfg = cfg.to_dict()
      for key in _PREPROCESS_KEYS:
        if cfg.get(key) is not None:
          value = cfg[key]
          result[key] = list(value) if isinstance(value, tuple) else value
      if isinstance(result["input_size"], list):
        result["input_size"] = int(result["input_size"][-1])
      result["from"] = f"timm pretrained_cfg of {args.model}"
  except ImportError:
    pass
  for key in _PREPROCESS_KEYS:
    value = getattr(args, key)
    if value is not None:
      result[key] = list(value) if isinstance(value, (list, tuple)) else value
      result["from"] = result["from"] + " + flags"
  return result


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


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
