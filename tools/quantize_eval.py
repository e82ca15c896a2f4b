"""float32 against int8 (qwix) top-1 of a trained run, in one pass over its evaluation split.

The code is vision_jax/cli/quantize_eval.py; `python -m vision_jax.cli.quantize_eval` and the
console command in setup.cfg run the same. `python tools/quantize_eval.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "quantize_eval")
