"""Grad-CAM speed: vision_jax.explain (jitted) against pytorch-grad-cam, same weights, same process.

  python tools/benchmark_explain.py --batch 32 --size 224 --repeats 3

Builds timm's ResNet-50 with random weights, loads the same weights with
`from_timm`, and times Grad-CAM on the default layer (layer4[-1]) for one batch.
Ours: the first call (trace + compile + run) is reported apart; the steady-state
figure is the median of the later calls, which also checks that a second call
with the same shapes does not recompile. Both sides use all the CPU threads
their library picks by default. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from vision_jax.cli.common import run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  import torch  # pylint: disable=import-outside-toplevel  (before TensorFlow/JAX)
  import timm  # pylint: disable=import-outside-toplevel
  from pytorch_grad_cam import GradCAM  # pylint: disable=import-outside-toplevel
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vision_jax import explain  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import from_timm  # pylint: disable=import-outside-toplevel
  from vision_jax.bench import timing  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  model = timm.create_model(args.model, pretrained=False).eval()
  module, variables = from_timm(args.model, {k: v.numpy() for k, v in model.state_dict().items()})
  x = np.random.default_rng(0).standard_normal((args.batch, args.size, args.size, 3))
  x = x.astype(np.float32)
  tensor = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  targets = np.arange(args.batch) % 1000

  def ours():
    return np.asarray(explain.grad_cam(module, variables, x, targets, upsample=True))

  _, first, _ = timing.timed(ours)  # compiles
  cache = explain.cam._cams._cache_size()  # pylint: disable=protected-access
  cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
  torch_targets = [ClassifierOutputTarget(int(t)) for t in targets]
  cam(input_tensor=tensor, targets=torch_targets)  # warms up the allocator
  times = timing.alternate({"ours": ours,
                            "torch": lambda: cam(input_tensor=tensor, targets=torch_targets)},
                           rounds=args.repeats)
  ours_times, torch_times = times["ours"], times["torch"]
  recompiled = explain.cam._cams._cache_size() != cache  # pylint: disable=protected-access

  result = {
      "model": args.model, "batch": args.batch, "size": args.size,
      "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
      "ours_first_call_s": round(first, 2),
      "ours_s": round(float(np.median(ours_times)), 3),
      "pytorch_grad_cam_s": round(float(np.median(torch_times)), 3),
      "speedup_vs_pytorch_grad_cam": round(float(np.median(torch_times) / np.median(ours_times)), 2),
      "second_call_recompiled": recompiled,
  }
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
