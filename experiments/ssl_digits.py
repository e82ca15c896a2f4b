"""Offline self-supervised check on the embedded digits: label-free pretraining vs two baselines.

For each method (SimCLR, DINO, MAE, BYOL) and seed, configs/<method>_digits.py
pretrains its encoder (cifar_resnet20; MAE: a 4-layer ViT of width 64) on the
1,437 training digits without their labels; the run ends with a linear probe on
the frozen encoder features (`train/simclr.linear_eval`, standardised features,
AdamW softmax regression) and a weighted kNN. The same two evaluations are then
run on
  - the same encoder, randomly initialised (the run's state before its first step), and
  - the raw pixels: the 16x16 images the encoder sees, flattened (256 features);
scikit-learn's LogisticRegression on the raw 8x8 pixels is printed as well when
scikit-learn is installed. Test accuracy is on the 360 test digits.

  python experiments/ssl_digits.py --method dino --seeds 0 1 2 3 4 --workdir /tmp/ssl_digits/dino

Writes WORKDIR/environment.json (the script's arguments), the trainer's
WORKDIR/<method>_<seed>/environment.json per training run and
WORKDIR/results.json; prints mean +- spread over the seeds of each figure, then
one JSON line with every figure. Each seed is one full-size run of its config
(100 epochs): minutes on 2 CPU cores, see experiments/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# experiments/summary.py, next to this file (also when a test loads this file by path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import summary  # noqa: E402  pylint: disable=wrong-import-position

from vision_jax import config_util  # noqa: E402  pylint: disable=wrong-import-position
from vision_jax import environment  # noqa: E402  pylint: disable=wrong-import-position


METHODS = ("simclr", "dino", "mae", "byol")


def load_config(method: str, arg: str = "", **changes):
  if method not in METHODS:
    raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
  path = os.path.join(summary.ROOT, "configs", f"{method}_digits.py")
  return config_util.load_config(path, arg, **changes)


def pixel_baselines(config, method: str = "simclr") -> dict[str, float]:
  """The config's linear probe and kNN on raw pixels (and sklearn's logistic regression).

  The probes' settings are those of the method's config block (config.<method>.knn/.linear).
  """
  # pylint: disable=import-outside-toplevel
  from vision_jax.data import digits as digits_lib
  from vision_jax.data import digits_dataset
  from vision_jax.train import simclr
  size = config.data.image_size
  train = digits_dataset(size, eval_split="train").eval
  test = digits_dataset(size).eval
  flat = lambda images: images.reshape(len(images), -1)  # noqa: E731
  out = simclr.representation_metrics((flat(train[0]), train[1]), (flat(test[0]), test[1]),
                                      config[method], num_classes=10, linear=True)
  results = {"pixels_knn_top1": out["knn_top1"], "pixels_linear_top1": out["linear_top1"]}
  try:
    from sklearn.linear_model import LogisticRegression
  except ImportError:
    return results
  (x, y), (xt, yt) = digits_lib.load_digits("train"), digits_lib.load_digits("test")
  clf = LogisticRegression(max_iter=5000).fit(x.reshape(len(x), -1) / 16.0, y)
  results["pixels_sklearn_logreg_top1"] = float(clf.score(xt.reshape(len(xt), -1) / 16.0, yt))
  return results


def random_encoder_metrics(config) -> dict[str, float]:
  """The run's final evaluation (kNN and linear probe) of the encoder as initialised.

  The trainer refuses a run of zero steps, so this builds the state the way
  `trainer.train_and_evaluate` does before its first step (same seed, model and
  initialiser) and applies the recipe's final evaluation to it.
  """
  # pylint: disable=import-outside-toplevel
  import functools

  import jax
  import optax

  from vision_jax import data as data_lib
  from vision_jax.train import recipes
  from vision_jax.train import sharding
  from vision_jax.train import steps as steps_lib
  recipe = recipes.get_recipe(config.recipe)
  mesh = sharding.make_mesh(config.num_devices)
  dataset = data_lib.get_dataset(config.data)
  model = recipe.build_model(config, dataset, jax.numpy.float32)
  sample = next(dataset.eval_iterator(mesh.devices.size))["image"]
  # No update is applied, so the optimizer is irrelevant: the parameters depend on the seed only.
  # DINO evaluates its teacher (the EMA slot), which starts as a copy of the student.
  state = steps_lib.init_state(functools.partial(
      steps_lib.create_train_state, model=model, tx=optax.identity(),
      input_shape=(1,) + sample.shape[1:], use_ema=bool(config.ema_decay)),
      jax.random.key(int(config.seed)))
  run_eval = recipe.make_eval(config, dataset, model, mesh,
                              int(config.eval_batch_size or config.batch_size))
  return run_eval(state, final=True)


def run(workdir: str, seeds, arg: str = "", changes: dict | None = None,
        baselines: bool = True, method: str = "simclr") -> dict:
  """Pretrains with `method` (and evaluates a random encoder) for each seed; returns all figures.

  `arg` and `changes` go to configs/<method>_digits.py; `baselines` adds the
  seed-independent raw-pixel figures (`pixel_baselines`).
  """
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  results: dict = {f"{method}_knn_top1": [], f"{method}_linear_top1": [], "random_knn_top1": [],
                   "random_linear_top1": [], "seconds": []}
  config = None
  for seed in seeds:
    config = load_config(method, arg, **(changes or {}))
    config.seed = seed
    start = time.time()
    pretrained = trainer.train_and_evaluate(config, os.path.join(workdir, f"{method}_{seed}"))
    results["seconds"].append(round(time.time() - start, 1))
    figures = {"random": random_encoder_metrics(config), method: pretrained}
    for encoder, final in figures.items():
      results[f"{encoder}_knn_top1"].append(final["knn_top1"])
      results[f"{encoder}_linear_top1"].append(final["linear_top1"])
  for key in [k for k in results if k.endswith("_top1")]:
    results[key.replace("_top1", "_mean")] = float(np.mean(results[key]))
  if baselines:
    results.update(pixel_baselines(config, method))
  return results


def spreads(results: dict) -> dict:
  """Mean +- spread (in %) over seeds of each per-seed figure of `run`'s results."""
  return {key: summary.spread(value) for key, value in results.items()
          if isinstance(value, list) and key.endswith("_top1")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", choices=METHODS, default="simclr")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--workdir", default=None, help="default: /tmp/ssl_digits/METHOD")
  parser.add_argument("--config_arg", default="",
                      help="argument string of configs/METHOD_digits.py")
  args = parser.parse_args()
  args.workdir = args.workdir or f"/tmp/ssl_digits/{args.method}"
  start = time.time()
  environment.write_environment(args.workdir, vars(args))
  results = run(args.workdir, args.seeds, args.config_arg, method=args.method)
  results["spread"] = spreads(results)
  results["total_seconds"] = round(time.time() - start, 1)
  summary.write_json(os.path.join(args.workdir, "results.json"), results)
  for key, stats in results["spread"].items():
    print(summary.describe(key, stats))
  print(json.dumps(results))


if __name__ == "__main__":
  main()
