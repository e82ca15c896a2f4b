"""Evaluates a trained run or converted weights: top-1, top-5, per-class accuracy, confusion PNG.

  python tools/evaluate.py --workdir /tmp/digits --confusion confusion.png
  python tools/evaluate.py --weights weights/resnet50 --data imagenet2012 --split validation

The source is config.data-style: 'digits', 'folder:/path' or a tfds name, with
--split. A run defaults to its own dataset and eval split; converted weights
read images with the preprocessing recorded in their model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vision_jax.inference import WEIGHTS_HELP  # noqa: E402  (plain Python, no JAX)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--workdir", help="a training run's directory (its latest checkpoint)")
  group.add_argument("--weights", help=WEIGHTS_HELP)
  parser.add_argument("--data", help="'digits', 'folder:/path' or a tfds name (default: the run's)")
  parser.add_argument("--split", help="split to evaluate (default: the source's eval split)")
  parser.add_argument("--data-dir", help="tfds data_dir")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--confusion", help="write the confusion matrix as a PNG")
  parser.add_argument("--output", help="write the metrics as JSON")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)

  import ml_collections  # pylint: disable=import-outside-toplevel
  from vision_jax import data as data_lib, environment, inference  # pylint: disable=import-outside-toplevel
  try:
    model = inference.open_model(args.workdir, args.weights, (args.confusion, args.output),
                                 args.overwrite)
  except (inference.LoadError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  data = {}
  if args.workdir and not args.data:
    data = dict(environment.read_environment(args.workdir)["config"]["data"])
    data.pop("mix", None)
  elif not args.data:
    print("error: --weights needs --data (and usually --split).", file=sys.stderr)
    return 2
  else:
    data = {"name": args.data}
  if data["name"] != "digits":
    data["preprocess_eval"] = model.preprocess
    data.setdefault("preprocess_train", model.preprocess)
  if args.split:
    data["eval_split"] = args.split
  if args.data_dir:
    data["data_dir"] = args.data_dir
  try:
    dataset = data_lib.get_dataset(ml_collections.ConfigDict(data))
  except data_lib.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  num_classes = len(model.class_names)
  if model.class_names[0] == "class_0":
    # Converted weights of a custom head: the evaluated dataset knows the names.
    model.class_names = inference.dataset_class_names(data, num_classes)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  top5 = 0
  for batch in dataset.eval_iterator(args.batch_size):
    mask = np.asarray(batch.get("mask", np.ones(len(batch["label"]), bool)), bool)
    logits = model.logits(batch["image"])[mask]
    labels = np.asarray(batch["label"])[mask]
    np.add.at(confusion, (labels, logits.argmax(1)), 1)
    k = min(5, num_classes)
    top5 += int((np.argsort(-logits, axis=1)[:, :k] == labels[:, None]).any(1).sum())
  total = int(confusion.sum())
  per_class = {model.class_names[i]: (float(confusion[i, i] / confusion[i].sum())
                                      if confusion[i].sum() else None)
               for i in range(num_classes)}
  metrics = {"count": total, "top1": float(np.trace(confusion) / total), "top5": top5 / total,
             "per_class_top1": per_class}
  print(json.dumps({k: v for k, v in metrics.items() if k != "per_class_top1"}))
  for name, acc in per_class.items():
    if acc is not None and num_classes <= 50:
      print(f"  {name}: {acc:.4f}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(metrics, f, indent=1)
  if args.confusion:
    plot_confusion(args.confusion, confusion, model.class_names)
    print(f"wrote {args.confusion}")
  return 0


def plot_confusion(path: str, confusion: np.ndarray, names) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  n = len(names)
  fig, ax = plt.subplots(figsize=(min(2 + 0.5 * n, 20), min(2 + 0.5 * n, 20)))
  ax.imshow(confusion, cmap="Blues")
  if n <= 30:
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
      for j in range(n):
        if confusion[i, j]:
          ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                  color="white" if confusion[i, j] > confusion.max() / 2 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
