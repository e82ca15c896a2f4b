"""Evaluates a trained run or converted weights: top-1, top-5, the worst classes, confusion PNG.

The code is vision_jax/cli/evaluate.py; `python -m vision_jax.cli.evaluate` and the console
command in setup.cfg run the same. `python tools/evaluate.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "evaluate")
