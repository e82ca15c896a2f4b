"""Plots training curves of one or more runs into a PNG: loss, eval top-1, learning rate, images/s.

  python tools/plot_metrics.py /tmp/digits --out curves.png
  python tools/plot_metrics.py /tmp/scratch /tmp/pretrained --names scratch pretrained \
      --x examples --out compare.png

Each WORKDIR is a training run's directory; its metrics.jsonl (one JSON object
per logged step and per evaluation, written by the trainer) is read. One line
per run, named in the legend by its directory (or --names). --x epoch needs
--examples-per-epoch (the training split's size). --out is a .png file, or a
directory that gets curves.png; an existing file is kept unless --overwrite is
given. See vision_jax/plots.py for the figure.
"""

from __future__ import annotations

import argparse

from vision_jax.cli import common



def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="training run directories")
  parser.add_argument("--out", default="curves.png",
                      help="a .png file, or a directory for curves.png (default curves.png)")
  parser.add_argument("--names", nargs="+", help="legend names, one per WORKDIR")
  parser.add_argument("--x", choices=("step", "examples", "epoch"), default="step",
                      help="horizontal axis: step, images seen, or epoch")
  parser.add_argument("--examples-per-epoch", type=int,
                      help="training split size, for --x epoch (1437 for the digits)")
  parser.add_argument("--title", help="figure title")
  parser.add_argument("--dpi", type=int, default=100)
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)

  from vision_jax import output_paths, plots  # pylint: disable=import-outside-toplevel
  from vision_jax.train import metrics  # pylint: disable=import-outside-toplevel
  try:
    out = output_paths.single_file(args.out, "curves.png")
    output_paths.refuse_overwrite([out], args.overwrite)
  except (output_paths.OutputError, FileExistsError) as e:
    return common.report(e)
  try:
    fig = plots.training_curves(args.workdirs, names=args.names, x=args.x,
                                examples_per_epoch=args.examples_per_epoch, title=args.title,
                                dpi=args.dpi)
    plots.save_figure(fig, out)
  except (plots.PlotError, metrics.MetricsFileError) as e:
    return common.report(e)
  except OSError as e:
    return common.report(f"cannot write {out}: {e.strerror or e}", common.EXIT_USAGE)
  print(f"wrote {out}")
  return 0


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
