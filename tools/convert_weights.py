"""Converts a foreign checkpoint into a vision_jax orbax checkpoint plus metadata JSON.

The code is vision_jax/cli/convert_weights.py; `python -m vision_jax.cli.convert_weights` and the console
command in setup.cfg run the same. `python tools/convert_weights.py --help` lists the options.
"""

import sys

from vision_jax.cli import convert_weights as _tool
from vision_jax.cli.common import run

if __name__ == "__main__":
  sys.exit(run(_tool.main))
else:  # `import convert_weights` with tools/ on the path (tests, notebooks) gets the tool's module itself
  sys.modules[__name__] = _tool
