"""Classifies image files with a trained run or converted weights: a table of the top-k classes.

The code is vision_jax/cli/predict.py; `python -m vision_jax.cli.predict` and the console
command in setup.cfg run the same. `python tools/predict.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "predict")
