"""Benchmarks: timing (`timing`) and the throughput trials against timm and Flax (`trials`).

Only the tools use this package (tools/benchmark.py through vision_jax/cli/benchmark.py,
tools/accelerator_report.py, tools/benchmark_input.py, tools/benchmark_explain.py,
tools/benchmark_pretrained.py); the training engine (vision_jax/train/) does not
import it. Every benchmark times through `timing.timed` (wall and CPU seconds of one
call) and compares sides with `timing.alternate` (the sides in turn, round after
round, medians), so that load from other processes hits each side alike.
"""

from vision_jax.config_base import DTYPES as _RUN_DTYPES

# The benchmarks' --dtype: the run's compute dtypes but float16 (timm's trial runs AMP in
# bfloat16 only), and 'auto' (bfloat16 on accelerators, float32 on the CPU).
DTYPES = ("auto",) + tuple(d for d in _RUN_DTYPES if d != "float16")
