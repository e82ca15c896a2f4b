"""Converts a foreign checkpoint into a vision_jax orbax checkpoint plus metadata JSON.

The code is vision_jax/cli/convert_weights.py; `python -m vision_jax.cli.convert_weights` and the console
command in setup.cfg run the same. `python tools/convert_weights.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "convert_weights")
