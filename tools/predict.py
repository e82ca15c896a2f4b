"""Classifies image files with a trained run or converted weights: top-k names as JSON lines.

  python tools/predict.py --workdir /tmp/digits images/*.png --top-k 3 --sheet sheet.png
  python tools/predict.py --weights weights/resnet50 photos/ --output preds.jsonl

Images are files, globs or folders. An image that cannot be decoded is named on
stderr and skipped. Existing output files are kept unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vision_jax.inference import WEIGHTS_HELP  # noqa: E402  (plain Python, no JAX)


def add_model_args(parser: argparse.ArgumentParser) -> None:
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--workdir", help="a training run's directory (its latest checkpoint)")
  group.add_argument("--weights", help=WEIGHTS_HELP)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_args(parser)
  parser.add_argument("images", nargs="+", help="image files, globs or folders")
  parser.add_argument("--top-k", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--output", help="write the JSON lines to this file (default: stdout)")
  parser.add_argument("--sheet", help="contact sheet PNG: each image with its top-3 labels")
  parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
  args = parser.parse_args(argv)

  from vision_jax import inference  # pylint: disable=import-outside-toplevel
  try:
    model = inference.open_model(args.workdir, args.weights, (args.output, args.sheet),
                                 args.overwrite)
  except (inference.LoadError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  paths, images = inference.read_image_args(args.images, model.preprocess,
                                            warn=lambda m: print(m, file=sys.stderr))
  if not paths:
    print("error: no image could be read.", file=sys.stderr)
    return 1
  probabilities = predict(model, images, args.batch_size)
  k = min(args.top_k, probabilities.shape[1])
  lines = []
  for path, p in zip(paths, probabilities):
    top = np.argsort(-p)[:k]
    lines.append({"image": path, "top_k": [
        {"class": int(c), "name": model.class_names[c], "probability": round(float(p[c]), 6)}
        for c in top]})
  text = "\n".join(json.dumps(line) for line in lines) + "\n"
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(text)
    print(f"wrote {len(lines)} predictions to {args.output}", file=sys.stderr)
  else:
    sys.stdout.write(text)
  if args.sheet:
    contact_sheet(args.sheet, model, paths, images, lines)
    print(f"wrote {args.sheet}", file=sys.stderr)
  return 0


def predict(model, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Softmax probabilities [N, classes], in batches."""
  out = []
  for start in range(0, len(images), batch_size):
    logits = model.logits(images[start:start + batch_size])
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    out.append(e / e.sum(axis=1, keepdims=True))
  return np.concatenate(out)


def contact_sheet(path: str, model, paths, images, lines, columns: int = 4) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from vision_jax.explain import to_uint8_image  # pylint: disable=import-outside-toplevel
  rows = -(-len(paths) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 4.0 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, image_path, image, line in zip(axes.ravel(), paths, images, lines):
    ax.imshow(to_uint8_image(image, model.mean, model.std), interpolation="nearest")
    labels = "\n".join(f"{t['name'][:22]} {t['probability']:.2f}" for t in line["top_k"][:3])
    ax.set_title(f"{os.path.basename(image_path)[:24]}\n{labels}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
