"""Evaluates a trained run or converted weights: top-1, top-5, the worst classes, confusion PNG.

  python tools/evaluate.py --workdir /tmp/digits --confusion confusion.png
  python tools/evaluate.py --weights weights/resnet50 --data imagenet2012 --split validation \
      --output results/

The source is config.data-style: 'digits', 'folder:/path' or a tfds name, with
--split. A run defaults to its own dataset and eval split; converted weights
read images with the preprocessing recorded in their model.json.

Prints a short table: the image count, top-1 and top-5, then the --worst classes
by top-1 (those with a mistake), each with the class it is most often mistaken
for. --output writes every figure as JSON (per-class top-1 included) to a .json
file, or to metrics.json in a directory; --confusion draws the confusion matrix
to a .png file, or to confusion.png in a directory. Existing files are kept
unless --overwrite is given.

--probe knn|linear|fewshot (repeatable) evaluates the representation instead of
the classifier: the model's pooled features (its num_classes=0 output) of the
--train-split (default: the source's training split) and of the evaluated split
feed the shared probes of vision_jax.eval.probes (weighted k-NN, logistic
regression, few-shot ridge); works for any checkpoint or pretrained tag, with or
without a classifier:

  python vision_jax/cli/evaluate.py --weights timm:vit_small_patch16_224.dino \
      --data imagenet2012 --split validation --probe knn --probe linear
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vision_jax.cli import common
from vision_jax.eval import analysis


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  common.add_model_args(parser)
  parser.add_argument("--data", help="'digits', 'folder:/path' or a tfds name (default: the run's)")
  parser.add_argument("--split", help="split to evaluate (default: the source's eval split)")
  parser.add_argument("--data-dir", help="tfds data_dir")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--confusion", help="confusion matrix: a .png file or a directory")
  parser.add_argument("--output", help="metrics as JSON: a .json file or a directory")
  parser.add_argument("--worst", type=int, default=5, help="how many worst classes to list")
  parser.add_argument("--overwrite", action="store_true")
  add_probe_options(parser)
  args = parser.parse_args(argv)

  # pylint: disable=import-outside-toplevel
  import ml_collections
  from vision_jax import data as data_lib, environment, inference, output_paths
  try:
    confusion_path = (output_paths.single_file(args.confusion, "confusion.png",
                                               option="--confusion") if args.confusion else None)
    output = (output_paths.single_file(args.output, "metrics.json", (".json",), "--output")
              if args.output else None)
    output_paths.refuse_overwrite([confusion_path, output], args.overwrite)
    model = inference.load_model(args.workdir, args.weights)
  except (inference.LoadError, FileExistsError, output_paths.OutputError) as e:
    return common.report(e)
  data = {}
  if args.workdir and not args.data:
    data = dict(environment.read_environment(args.workdir)["config"]["data"])
    data.pop("mix", None)
  elif not args.data:
    return common.report("--weights needs --data (and usually --split).", common.EXIT_USAGE)
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
    return common.report(e)
  if args.probe:
    return run_probes(args, model, data, dataset, output)
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
    confusion += analysis.confusion_matrix(labels, logits.argmax(1), num_classes)
    k = min(5, num_classes)
    top5 += int((np.argsort(-logits, axis=1)[:, :k] == labels[:, None]).any(1).sum())
  total = int(confusion.sum())
  per_class = {model.class_names[i]: (float(confusion[i, i] / confusion[i].sum())
                                      if confusion[i].sum() else None)
               for i in range(num_classes)}
  metrics = {"count": total, "top1": float(np.trace(confusion) / total), "top5": top5 / total,
             "per_class_top1": per_class}
  sys.stdout.write(summary_table(metrics, confusion, model.class_names, args.worst))
  if output:
    with open(output_paths.prepare(output), "w", encoding="utf-8") as f:
      json.dump(metrics, f, indent=1)
    print(f"wrote {output}")
  if confusion_path:
    plot_confusion(output_paths.prepare(confusion_path), confusion, model.class_names)
    print(f"wrote {confusion_path}")
  return 0


# vision_jax.eval.probes.PROBES, spelled out so that --help does not import JAX.
PROBE_CHOICES = ("knn", "linear", "fewshot")


def add_probe_options(parser: argparse.ArgumentParser) -> None:
  """--probe and the probes' settings (unset: vision_jax.eval.probes' defaults)."""
  group = parser.add_argument_group("representation probes")
  group.add_argument("--probe", action="append", choices=PROBE_CHOICES,
                     help="evaluate frozen features with this probe (repeatable)")
  group.add_argument("--train-split", help="split the probes learn from (default: the "
                     "source's training split)")
  group.add_argument("--knn-k", type=int, help="neighbours (default 20)")
  group.add_argument("--knn-temperature", type=float, help="vote temperature (default 0.07)")
  group.add_argument("--linear-l2", type=float, help="weight penalty (default 1e-4)")
  group.add_argument("--fewshot-shots", help="comma-separated examples per class "
                     "(default 1,5,10,25)")
  group.add_argument("--fewshot-seeds", type=int, help="draws per shot count (default 3)")


def run_probes(args: argparse.Namespace, model, data: dict, dataset, output: str | None) -> int:
  """--probe: the probes on the model's pooled features; prints them, writes --output JSON."""
  # pylint: disable=import-outside-toplevel
  import jax
  import ml_collections
  from vision_jax import data as data_lib
  from vision_jax.eval import probes
  k = probes.KNN_K if args.knn_k is None else args.knn_k
  temperature = probes.KNN_TEMPERATURE if args.knn_temperature is None else args.knn_temperature
  l2 = probes.LINEAR_L2 if args.linear_l2 is None else args.linear_l2
  seeds = probes.FEWSHOT_SEEDS if args.fewshot_seeds is None else args.fewshot_seeds
  try:
    shots = (probes.FEWSHOT_SHOTS if args.fewshot_shots is None
             else tuple(int(s) for s in args.fewshot_shots.split(",")))
  except ValueError:
    return common.report(f"--fewshot-shots {args.fewshot_shots!r}: give whole numbers "
                         "separated by commas, e.g. 1,5,10,25.", common.EXIT_USAGE)
  if args.confusion:
    return common.report("--confusion draws the classifier's mistakes; it does not combine "
                         "with --probe.", common.EXIT_USAGE)
  memory = dict(data, eval_split=args.train_split or data.get("train_split") or "train")
  try:
    memory_set = data_lib.get_dataset(ml_collections.ConfigDict(memory))
  except data_lib.DatasetError as e:
    return common.report(e)
  # num_classes=0: every vision_jax model returns its pooled features (what the classifier
  # reads); a classifier in the variables is left unused.
  encoder = model.module.clone(num_classes=0)
  feature_fn = jax.jit(lambda x: encoder.apply(model.variables, x, train=False))
  try:
    train = probes.features_of_batches(feature_fn, memory_set.eval_iterator(args.batch_size))
    test = probes.features_of_batches(feature_fn, dataset.eval_iterator(args.batch_size))
    metrics = probes.probe_metrics(
        train, test, tuple(dict.fromkeys(args.probe)),
        knn={"k": k, "temperature": temperature}, linear={"l2": l2},
        fewshot={"shots": shots, "seeds": seeds})
  except probes.ProbeError as e:
    return common.report(e)
  lines = [f"images  {len(test[1])} evaluated, {len(train[1])} to learn from "
           f"({memory['eval_split']} split)"]
  if "knn_top1" in metrics:
    lines.append(f"knn top-1     {metrics['knn_top1']:.4f}  (k={k}, T={temperature})")
  if "linear_top1" in metrics:
    lines.append(f"linear top-1  {metrics['linear_top1']:.4f}  (l2={l2})")
  for n in shots if "fewshot" in args.probe else ():
    lines.append(f"fewshot {n}-shot  {metrics[f'fewshot_{n}shot']:.4f} "
                 f"+- {metrics[f'fewshot_{n}shot_std']:.4f}  ({seeds} draws)")
  sys.stdout.write("\n".join(lines) + "\n")
  if output:
    from vision_jax import output_paths  # pylint: disable=import-outside-toplevel
    with open(output_paths.prepare(output), "w", encoding="utf-8") as f:
      json.dump(metrics, f, indent=1)
    print(f"wrote {output}")
  return 0


def summary_table(metrics: dict, confusion: np.ndarray, names, worst: int = 5) -> str:
  """Top-1 and top-5 over the images, then the `worst` classes by top-1, each with the class it
  is most often mistaken for. Only classes with a mistake are listed."""
  lines = [f"images  {metrics['count']}", f"top-1   {metrics['top1']:.4f}",
           f"top-5   {metrics['top5']:.4f}"]
  counts = confusion.sum(1)
  wrong_somewhere = np.flatnonzero(counts > np.diag(confusion))
  accuracy = np.diag(confusion)[wrong_somewhere] / counts[wrong_somewhere]
  order = wrong_somewhere[np.argsort(accuracy, kind="stable")][:max(0, worst)]
  if not len(order) and metrics["count"]:
    lines += ["", "no class has a mistake"]
  if len(order):
    rows = [("worst classes", "top-1", "images", "most often taken for")]
    for c in order:
      wrong = confusion[c].copy()
      wrong[c] = 0
      taken = f"{names[int(wrong.argmax())]} ({int(wrong.max())})"
      rows.append((str(names[c]), f"{confusion[c, c] / counts[c]:.4f}", str(int(counts[c])), taken))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines.append("")
    for r in rows:
      lines.append("  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]),
                              r[2].rjust(widths[2]), r[3]]).rstrip())
  return "\n".join(lines) + "\n"


def plot_confusion(path: str, confusion: np.ndarray, names) -> None:
  plt = common.pyplot()
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
  common.save_png(fig, path, dpi=80)


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
