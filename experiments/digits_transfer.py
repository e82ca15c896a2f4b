"""Offline transfer check on the embedded digits (no download, CPU): pretrained vs scratch.

For each seed: pretrain cifar_resnet20 on digits 0-4 (all 721 training images),
then fine-tune it on digits 5-9 with only `--shots` labelled images per class,
and run the same fine-tuning from scratch (same images, steps and
hyper-parameters). Test accuracy is on all 180 test images of digits 5-9.
Each seed is a whole repetition: pretraining, the few-shot sample's order and
both initialisations all change with it.

  python experiments/digits_transfer.py --seeds 0 1 2 3 4 --workdir /tmp/digits_transfer

A pretraining run that already finished in its workdir is reused (the
trainer resumes at its last step and only evaluates).

Writes WORKDIR/environment.json (the script's arguments as its config), the
trainer's WORKDIR/<run>/environment.json per training run, and WORKDIR/results.json;
prints the per-seed figures, mean +- spread, and the margin by which
pretraining beats scratch on the worst seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# experiments/summary.py, next to this file (also when a test loads this file by path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import summary  # noqa: E402  pylint: disable=wrong-import-position

from vision_jax import config_util  # noqa: E402  pylint: disable=wrong-import-position
from vision_jax import environment  # noqa: E402  pylint: disable=wrong-import-position

CONFIG = os.path.join(summary.ROOT, "configs", "digits.py")


def finetune_config(seed: int, shots: int, steps: int, lr: float, init_from: str | None):
  """configs/digits.py on classes 5-9 with `shots` images per class, `steps` SGD steps."""
  config = config_util.load_config(CONFIG, f"classes=56789,shots={shots},lr={lr}")
  config.total_epochs, config.total_steps = None, steps
  config.schedule.warmup_epochs, config.schedule.warmup_steps = None, 5
  config.log_every_steps, config.checkpoint_every_steps = 25, 10_000
  config.seed = seed
  config.init_from = init_from
  return config


def train(config, workdir: str) -> float:
  """The final test top-1 of one run (the trainer writes its WORKDIR/environment.json)."""
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  return trainer.train_and_evaluate(config, workdir)["eval_top1"]


def run_seed(seed: int, workdir: str, *, pretrain_epochs: int = 20, shots: int = 10,
             finetune_steps: int = 100, lr: float = 0.02, pretrain_dir: str | None = None,
             num_devices: int | None = None) -> dict[str, float]:
  """One repetition: pretraining on 0-4, then fine-tuning on 5-9 from scratch and from it.

  Returns the test top-1 of the three runs (fractions). `num_devices` None uses
  every device; the figures in experiments/README.md are for one device (the
  device count changes the float rounding, hence the figures).
  """
  pre_dir = os.path.join(pretrain_dir or workdir, f"pretrain_01234_{seed}")
  pre = config_util.load_config(CONFIG, f"classes=01234,epochs={pretrain_epochs}")
  pre.seed, pre.num_devices = seed, num_devices
  top1 = {"pretrain_01234": train(pre, pre_dir)}
  for start, init_from in (("scratch", None), ("pretrained", pre_dir)):
    config = finetune_config(seed, shots, finetune_steps, lr, init_from)
    config.num_devices = num_devices
    top1[start] = train(config, os.path.join(workdir, f"{start}_{seed}"))
  return top1


def run(args: argparse.Namespace) -> dict:
  """Every seed's repetition; returns the figures (per seed and mean +- spread, in %)."""
  environment.write_environment(args.workdir, vars(args))
  top1: dict[str, list[float]] = {"pretrain_01234": [], "scratch": [], "pretrained": []}
  for seed in args.seeds:
    figures = run_seed(seed, args.workdir, pretrain_epochs=args.pretrain_epochs,
                       shots=args.shots, finetune_steps=args.finetune_steps, lr=args.lr,
                       pretrain_dir=args.pretrain_dir)
    for key, value in figures.items():
      top1[key].append(value)
  gaps = [p - s for p, s in zip(top1["pretrained"], top1["scratch"])]
  return {"args": vars(args), **{k: summary.spread(v) for k, v in top1.items()},
          "gap_pretrained_minus_scratch": summary.spread(gaps)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--workdir", default="/tmp/digits_transfer")
  parser.add_argument("--pretrain_epochs", type=int, default=20)
  parser.add_argument("--pretrain_dir", default=None,
                      help="where the pretraining runs live (default: WORKDIR); a finished "
                      "run there is reused, so fine-tuning variants can share them")
  parser.add_argument("--shots", type=int, default=10, help="training images per class of 5-9")
  parser.add_argument("--finetune_steps", type=int, default=100)
  parser.add_argument("--lr", type=float, default=0.02, help="fine-tuning peak learning rate")
  args = parser.parse_args()
  start = time.time()
  results = run(args)
  results["seconds"] = round(time.time() - start, 1)
  summary.write_json(os.path.join(args.workdir, "results.json"), results)
  for name in ("pretrain_01234", "pretrained", "scratch", "gap_pretrained_minus_scratch"):
    print(summary.describe(name, results[name]))
  gap = results["gap_pretrained_minus_scratch"]
  verdict = "beats" if gap["min"] > 0 else "does NOT beat"
  print(f"pretrained {verdict} scratch on every seed; worst-seed margin {gap['min']:.1f} points")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
