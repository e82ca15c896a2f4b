"""Evaluates a trained run or converted weights: top-1, top-5, the worst classes, confusion PNG.

The code is vision_jax/cli/evaluate.py; `python -m vision_jax.cli.evaluate` and the console
command in setup.cfg run the same. `python tools/evaluate.py --help` lists the options.
"""

import sys

from vision_jax.cli import evaluate as _tool
from vision_jax.cli.common import run

if __name__ == "__main__":
  sys.exit(run(_tool.main))
else:  # `import evaluate` with tools/ on the path (tests, notebooks) gets the tool's module itself
  sys.modules[__name__] = _tool
