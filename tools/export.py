"""Exports a trained run or converted weights to StableHLO, SavedModel, TFLite or ONNX.

The code is vision_jax/cli/export.py; `python -m vision_jax.cli.export` and the console
command in setup.cfg run the same. `python tools/export.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "export")
