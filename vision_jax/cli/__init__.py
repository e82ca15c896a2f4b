"""The command line: `python -m vision_jax.main` and the tools, with one error path.

Each command is a module here with `main(argv=None) -> int` (the exit code):

  vj-train      vision_jax.main          python -m vision_jax.main --config=... --workdir=...
  vj-predict    vision_jax.cli.predict   top-k classes of image files
  vj-evaluate   vision_jax.cli.evaluate  top-1/top-5, worst classes, confusion matrix
  vj-explain    vision_jax.cli.explain   saliency maps drawn on the images
  vj-convert    vision_jax.cli.convert_weights  timm/torchvision/.npz -> converted weights
  vj-benchmark  vision_jax.cli.benchmark train-step throughput against timm
  vj-plot       vision_jax.cli.plot_metrics     training curves of workdirs

The console commands are declared in setup.cfg ([options.entry_points]);
`python tools/NAME.py` and `python -m vision_jax.cli.NAME` run the same code.
`common` holds what every command shares: the --workdir/--weights options,
`--verbose`, the `error: ...` line and the exit codes (2: the command line or
its input is wrong, 1: the work itself failed).
"""
