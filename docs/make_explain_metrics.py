"""The measured claims of docs/explain.md: metrics and sanity checks on the digits model.

  nice python docs/make_explain_metrics.py --out /tmp/explain_metrics

Trains cifar_resnet20 on the embedded digits (16 px) twice with the bare jitted
loop of tests/test_explain.py (`trained_digits_model`): on the true labels and
on shuffled ones (longer, so that it memorises them). The trainer's own run on
shuffled labels is `vision_jax.explain.sanity.train_with_permuted_labels`; this
script uses the short loop to fit a loaded 2-core machine. Writes metrics.json,
sanity.json, sanity.png and prints the tables that docs/explain.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from vision_jax import models  # noqa: E402
from vision_jax.data import digits_dataset  # noqa: E402
from vision_jax.explain import metrics, sanity  # noqa: E402
from vision_jax.forward import eval_apply  # noqa: E402

METHODS = {"gradcam": {}, "gradcam++": {}, "saliency": {},
           "ig": {"steps": 16, "black_value": -1.0, "channel_reduce": "abs_sum"},
           "smoothgrad": {"samples": 16}}


def train(labels_seed: int | None, steps: int, seed: int = 0):
  """(module, variables) trained with Adam; labels shuffled when labels_seed is given."""
  dataset = digits_dataset(image_size=16)
  x, y = dataset.train
  if labels_seed is not None:
    y = np.random.default_rng(labels_seed).permutation(y)
  module = models.create_model("cifar_resnet20", num_classes=10)
  # Jitted: an eager init compiles every operation on its own.
  variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 16, 16, 1)))
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))

  @jax.jit
  def step(params, stats, opt_state, images, labels):
    def loss_fn(p):
      logits, new = module.apply({"params": p, "batch_stats": stats}, images, train=True,
                                 mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt_state, loss

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(y), 64, replace=False)
    params, stats, opt_state, loss = step(params, stats, opt_state, x[idx], y[idx])
  train_acc = np.mean(np.asarray(module.apply({"params": params, "batch_stats": stats},
                                              x[:512])).argmax(1) == y[:512])
  print(f"trained ({'shuffled' if labels_seed is not None else 'true'} labels, {steps} steps): "
        f"loss {float(loss):.3f}, train top-1 {train_acc:.3f}", flush=True)
  return module, {"params": params, "batch_stats": stats}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--sanity-images", type=int, default=16)
  parser.add_argument("--permuted-steps", type=int, default=600)
  parser.add_argument("--skip-metrics", action="store_true",
                      help="only the sanity checks (the metrics table is the slow part)")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  module, variables = train(None, 100)
  images, labels = digits_dataset(image_size=16).eval
  accuracy = np.mean(np.asarray(eval_apply(module, variables, images)).argmax(1) == labels)
  print(f"test top-1 {accuracy:.3f}", flush=True)
  fns = {m: sanity.method_fn(m, **o) for m, o in METHODS.items()}
  if not args.skip_metrics:
    write_metrics_table(module, variables, fns, images, labels, accuracy, args)
  run_sanity_checks(module, variables, fns, images, labels, args)
  print(f"done in {time.time() - start:.0f} s; {args.out}")


def write_metrics_table(module, variables, fns, images, labels, accuracy, args) -> None:
  """Every metric for every method and for random maps, on the first `args.images` images."""
  x, y = images[:args.images], labels[:args.images]
  table = {}
  rows = {m: np.asarray(fn(module, variables, x, y)) for m, fn in fns.items()}
  rows["random"] = np.random.default_rng(0).uniform(size=x.shape[:3]).astype(np.float32)
  names = [m for m in metrics.METRICS if m != "pointing_game"]
  for name, maps in rows.items():
    wanted = [m for m in names if not (name == "random" and m == "max_sensitivity")]
    call = None
    if name in fns:
      call = (lambda images, t, fn=fns[name]: fn(module, variables, images, t))
    # Black (-1) is the digits' background: deletion removes ink.
    table[name] = metrics.evaluate(wanted, module, variables, x, maps, y, explain_fn=call,
                                   baseline=-1.0, sensitivity_samples=5)
    print(name, {k: round(v, 3) for k, v in table[name].items()}, flush=True)
  with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump({"test_top1": float(accuracy), "images": args.images, "table": table}, f, indent=2)


def run_sanity_checks(module, variables, fns, images, labels, args) -> None:
  """Cascading and independent model randomisation, and data randomisation."""
  xs, ys = images[:args.sanity_images], labels[:args.sanity_images]
  checks = [sanity.model_randomisation(module, variables, xs, fns, ys, mode=mode)
            for mode in ("cascading", "independent")]
  _, permuted = train(1, args.permuted_steps, seed=1)
  checks.append(sanity.data_randomisation(module, variables, permuted, xs, fns, ys))
  for check in checks:
    print(check.mode, "steps:", check.steps)
    for m in fns:
      print(f"  {m:11s} SSIM {np.round(check.ssim[m], 2).tolist()}")
      print(f"  {m:11s} rank {np.round(check.spearman[m], 2).tolist()}")
  with open(os.path.join(args.out, "sanity.json"), "w", encoding="utf-8") as f:
    json.dump([c.as_dict() for c in checks], f, indent=2)
  sanity.plot(checks, os.path.join(args.out, "sanity.png"))


if __name__ == "__main__":
  main()
