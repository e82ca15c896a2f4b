"""Reports on a dataset before training: classes, sizes, bad files, duplicates and leakage.

  python tools/inspect_data.py --data folder:/data/mine --model resnet50 --json report.json --grid grid.png
  python tools/inspect_data.py --data digits
  python tools/inspect_data.py --data cifar10 --data-dir /data/tfds --max-examples 20000

The source is named as config.data.name: 'folder:/path', 'digits' or a tfds name.
The report goes to the terminal, and as JSON (--json) and a PNG of thumbnails
(--grid) where asked; docs/data.md describes its fields and checks. Exit code:
0, or 1 when the report holds errors (what a training run with the default
config.data.checks='error' would refuse), 2 for bad arguments or unreadable data.
"""

from __future__ import annotations

import argparse
import json
import sys

from vision_jax.cli.common import run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="'folder:/path', 'digits' or a tfds name")
  parser.add_argument("--train-split", help="default: train")
  parser.add_argument("--eval-split", help="default: val/validation/test (folder), the "
                      "source's evaluation split otherwise")
  parser.add_argument("--data-dir", help="tfds data_dir")
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--model", help="a registered model: compare image sizes with its input")
  size.add_argument("--image-size", type=int, help="the input side to compare image sizes with")
  parser.add_argument("--max-examples", type=int, help="tfds: read at most this many per split")
  parser.add_argument("--checks", choices=("error", "warn"), default="error",
                      help="as config.data.checks: whether leakage is an error")
  parser.add_argument("--max-cross-split-duplicates", type=int, default=0)
  parser.add_argument("--json", help="write the report (and its findings) as JSON")
  parser.add_argument("--grid", help="write a PNG of thumbnails per class and of the copies")
  args = parser.parse_args(argv)

  # pylint: disable=import-outside-toplevel
  from vision_jax.data import DatasetError
  from vision_jax.data import report as report_lib
  expected = args.image_size
  if args.model:
    from vision_jax import models
    try:
      expected = models.model_info(args.model).input_size
    except (KeyError, ValueError) as e:
      print(f"error: --model={args.model}: {e}", file=sys.stderr)
      return 2
  try:
    report, scans = report_lib.inspect(args.data, args.train_split, args.eval_split,
                                       args.data_dir, expected, args.max_examples)
  except DatasetError as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2
  found = report_lib.findings(report, args.checks, args.max_cross_split_duplicates)
  print(report_lib.format_report(report, found))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({**report, "findings": found}, f, indent=1)
  if args.grid:
    report_lib.render_grid(report, scans, args.grid)
  return 1 if any(f["severity"] == "error" for f in found) else 0


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
