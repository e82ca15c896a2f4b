"""Offline transfer check on the embedded digits (no download, CPU, a few minutes).

Pretrain cifar_resnet20 on digits 0-4 (all 721 training images), then fine-tune
on digits 5-9 with only 10 labelled images per class, and compare with the same
fine-tuning run started from scratch (same 50 images, same steps, same
hyper-parameters). Test accuracy is on all 180 test images of digits 5-9.

  python experiments/digits_transfer.py --seeds 0 1 2 --workdir /tmp/digits_transfer
"""

import argparse
import json
import os

import numpy as np

from vision_jax import config_util


CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "digits.py")


def load_config(arg):
  return config_util.load_config(CONFIG, arg)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default="/tmp/digits_transfer")
  parser.add_argument("--pretrain_epochs", type=int, default=20)
  parser.add_argument("--finetune_steps", type=int, default=100)
  args = parser.parse_args()
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel

  pre_dir = os.path.join(args.workdir, "pretrain_01234")
  pre = load_config(f"classes=01234,epochs={args.pretrain_epochs}")
  pre_final = trainer.train_and_evaluate(pre, pre_dir)
  results = {"pretrain_top1_on_01234": pre_final["eval_top1"], "scratch": [], "pretrained": []}
  for seed in args.seeds:
    for start in ("scratch", "pretrained"):
      config = load_config("classes=56789,shots=10,lr=0.05")
      config.total_epochs, config.total_steps = None, args.finetune_steps
      config.schedule.warmup_epochs, config.schedule.warmup_steps = None, 5
      config.log_every_steps, config.checkpoint_every_steps = 25, 10_000
      config.seed = seed
      if start == "pretrained":
        config.init_from = pre_dir
      final = trainer.train_and_evaluate(config, os.path.join(args.workdir, f"{start}_{seed}"))
      results[start].append(final["eval_top1"])
  for start in ("scratch", "pretrained"):
    results[f"{start}_mean"] = float(np.mean(results[start]))
  print(json.dumps(results))


if __name__ == "__main__":
  main()
