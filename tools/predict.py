"""Classifies image files with a trained run or converted weights: a table of the top-k classes.

The code is vision_jax/cli/predict.py; `python -m vision_jax.cli.predict` and the console
command in setup.cfg run the same. `python tools/predict.py --help` lists the options.
"""

import sys

from vision_jax.cli import predict as _tool
from vision_jax.cli.common import run

if __name__ == "__main__":
  sys.exit(run(_tool.main))
else:  # `import predict` with tools/ on the path (tests, notebooks) gets the tool's module itself
  sys.modules[__name__] = _tool
