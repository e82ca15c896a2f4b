"""Attribution heatmaps over images: one overlay PNG per image and a grid PNG.

  python tools/explain.py --workdir /tmp/digits --method gradcam images/ --output-dir out/
  python tools/explain.py --weights weights/vit --method rollout cat.jpg --output-dir out/

Methods: gradcam, gradcam++, ig (Integrated Gradients, black baseline),
smoothgrad, rollout (ViTs and hybrids only). The explained class is the
predicted one unless --target is given. Existing files are kept unless
--overwrite is given; undecodable images are named and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vision_jax.inference import WEIGHTS_HELP  # noqa: E402  (plain Python, no JAX)

METHODS = ("gradcam", "gradcam++", "ig", "smoothgrad", "rollout")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--workdir", help="a training run's directory (its latest checkpoint)")
  group.add_argument("--weights", help=WEIGHTS_HELP)
  parser.add_argument("images", nargs="+", help="image files, globs or folders")
  parser.add_argument("--method", choices=METHODS, default="gradcam")
  parser.add_argument("--output-dir", required=True)
  parser.add_argument("--target", type=int, help="class to explain (default: the predicted one)")
  parser.add_argument("--layer", help="Grad-CAM layer (module path); default per family")
  parser.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
  parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
  parser.add_argument("--scale", type=int, default=0,
                      help="enlarge small images to at least this many pixels per side")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)

  from vision_jax import explain, inference  # pylint: disable=import-outside-toplevel
  try:
    model = inference.load_model(args.workdir, args.weights)
  except inference.LoadError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  paths, images = inference.read_image_args(args.images, model.preprocess,
                                            warn=lambda m: print(m, file=sys.stderr))
  if not paths:
    print("error: no image could be read.", file=sys.stderr)
    return 1
  names = [os.path.splitext(os.path.basename(p))[0] + f"_{_slug(args.method)}.png" for p in paths]
  outputs = [os.path.join(args.output_dir, n) for n in names]
  grid_path = os.path.join(args.output_dir, f"grid_{_slug(args.method)}.png")
  try:
    for path in outputs + [grid_path]:
      inference.refuse_overwrite(path, args.overwrite)
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  targets = None if args.target is None else np.full(len(paths), args.target)
  try:
    maps = compute_maps(explain, model, images, targets, args)
  except explain.ExplainError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  explained = targets if targets is not None else model.logits(images).argmax(1)
  os.makedirs(args.output_dir, exist_ok=True)
  overlays, inputs = [], []
  for path, image, heat in zip(outputs, images, maps):
    rgb = explain.overlay(image, heat, alpha=args.alpha, mean=model.mean, std=model.std)
    rgb = _enlarge(rgb, args.scale)
    _save_png(path, rgb)
    overlays.append(rgb)
    inputs.append(_enlarge(explain.to_uint8_image(image, model.mean, model.std), args.scale))
  _save_grid(grid_path, inputs, overlays, [model.class_names[int(t)] for t in explained],
             args.method)
  for path, t in zip(outputs, explained):
    print(f"{path}: {args.method} for class {model.class_names[int(t)]!r}")
  print(f"{grid_path}: grid of {len(outputs)}")
  return 0


def compute_maps(explain, model, images, targets, args) -> np.ndarray:
  """[N, H, W] maps in [0, 1] for the chosen method, in batches of 16."""
  out = []
  for start in range(0, len(images), 16):
    x = images[start:start + 16]
    t = None if targets is None else targets[start:start + 16]
    if args.method in ("gradcam", "gradcam++"):
      fn = explain.grad_cam if args.method == "gradcam" else explain.grad_cam_plus_plus
      maps = fn(model.module, model.variables, x, t, layer=args.layer, upsample=True)
    elif args.method == "ig":
      black = _black_value(model)
      maps = explain.integrated_gradients(model.module, model.variables, x, t, steps=args.steps,
                                          black_value=black, channel_reduce="abs_sum",
                                          upsample=True)
    elif args.method == "smoothgrad":
      maps = explain.smooth_grad(model.module, model.variables, x, t, upsample=True)
    else:
      maps = explain.attention_rollout(model.module, model.variables, x, t, upsample=True)
    out.append(np.asarray(maps))
  return np.concatenate(out)


def _black_value(model):
  # The model-input value of a black pixel under the model's normalisation.
  if model.mean is None or model.std is None:
    return 0.0
  return [-m / s for m, s in zip(model.mean, model.std)]


def _slug(method: str) -> str:
  return method.replace("+", "pp")


def _enlarge(rgb: np.ndarray, scale: int) -> np.ndarray:
  factor = max(1, -(-scale // max(rgb.shape[:2]))) if scale else 1
  return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def _save_png(path: str, rgb: np.ndarray) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.imsave(path, rgb)


def _save_grid(path: str, inputs, overlays, titles, method: str, columns: int = 4) -> None:
  """Each image next to its overlay, `columns` pairs per row, titled with the explained class."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  columns = min(columns, len(overlays))
  rows = -(-len(overlays) // columns)
  fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.0 * 2 * columns, 2.2 * rows),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for i, (image, rgb, title) in enumerate(zip(inputs, overlays, titles)):
    row, col = divmod(i, columns)
    axes[row, 2 * col].imshow(image, interpolation="nearest")
    axes[row, 2 * col].set_title(f"class {title}", fontsize=9)
    axes[row, 2 * col + 1].imshow(rgb, interpolation="nearest")
    axes[row, 2 * col + 1].set_title(method, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
