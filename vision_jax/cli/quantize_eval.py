"""What int8 costs: float32 against int8 (qwix post-training) top-1 of a trained run, one script.

  python tools/quantize_eval.py --workdir /tmp/digits [--batch-size 128]

Loads the run's latest checkpoint (EMA parameters when the run kept them, as
tools/evaluate.py does), quantizes every convolution and matmul to int8 weights
and int8 dynamic activations (vision_jax.quantize), and evaluates both models
on the run's own evaluation split in the same pass. Prints one JSON line: the
image count, `fp32_top1`, `int8_top1`, `top1_drop` (points), `top1_agreement`
(the fraction of images whose top-1 class is the same), the largest logit
difference, and the parameter bytes of each.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from vision_jax.cli import common


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a training run's directory")
  parser.add_argument("--batch-size", type=int, default=128)
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    raise common.CommandLineError(f"--batch-size {args.batch_size}: must be at least 1.")
  # pylint: disable=import-outside-toplevel
  import jax
  import ml_collections

  from vision_jax import data as data_lib
  from vision_jax import environment, inference, quantize
  try:
    model = inference.load_model(workdir=args.workdir)
    qmodule = quantize.int8_model(model.module)
  except (inference.LoadError, quantize.QuantizationError) as e:
    return common.report(e)
  data = dict(environment.read_environment(args.workdir)["config"]["data"])
  data.pop("mix", None)
  dataset = data_lib.get_dataset(ml_collections.ConfigDict(data))

  fp32 = jax.jit(lambda v, x: model.module.apply(v, x, train=False))
  int8 = jax.jit(lambda v, x: qmodule.apply(v, x, train=False))
  qvariables = None
  correct = {"fp32": 0, "int8": 0}
  agree = total = 0
  max_diff = 0.0
  for batch in dataset.eval_iterator(args.batch_size):
    mask = np.asarray(batch.get("mask", np.ones(len(batch["label"]), bool)), bool)
    images = np.asarray(batch["image"], np.float32)
    if qvariables is None:
      qvariables = quantize.quantize_variables(qmodule, model.variables, images)
    logits = {"fp32": np.asarray(fp32(model.variables, images))[mask],
              "int8": np.asarray(int8(qvariables, images))[mask]}
    labels = np.asarray(batch["label"])[mask]
    for name, values in logits.items():
      correct[name] += int((values.argmax(1) == labels).sum())
    agree += int((logits["fp32"].argmax(1) == logits["int8"].argmax(1)).sum())
    max_diff = max(max_diff, float(np.abs(logits["fp32"] - logits["int8"]).max(initial=0.0)))
    total += int(mask.sum())
  if total == 0:
    return common.report(f"--workdir {args.workdir}: its evaluation split has no images.")
  row = {"workdir": args.workdir, "count": total, "fp32_top1": correct["fp32"] / total,
         "int8_top1": correct["int8"] / total,
         "top1_drop_points": 100 * (correct["fp32"] - correct["int8"]) / total,
         "top1_agreement": agree / total, "max_abs_logit_diff": max_diff,
         "fp32_param_bytes": quantize.param_bytes(model.variables),
         "int8_param_bytes": quantize.param_bytes(qvariables)}
  print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()}))
  return 0


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
