"""Plots training curves of one or more runs into a PNG: loss, eval top-1, learning rate, images/s.

The code is vision_jax/cli/plot_metrics.py; `python -m vision_jax.cli.plot_metrics` and the console
command in setup.cfg run the same. `python tools/plot_metrics.py --help` lists the options.
"""

import sys

from vision_jax.cli import plot_metrics as _tool
from vision_jax.cli.common import run

if __name__ == "__main__":
  sys.exit(run(_tool.main))
else:  # `import plot_metrics` with tools/ on the path (tests, notebooks) gets the tool's module itself
  sys.modules[__name__] = _tool
