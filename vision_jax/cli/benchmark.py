"""Training throughput of a model: images/s, compile time, FLOPs, MFU, and peers.

  python tools/benchmark.py --model resnet50 --batch-size 16 --image-size 128 \
      [--compare timm] [--compare flax] [--dtype auto|float32|bfloat16] \
      [--steps 5] [--repeats 3] [--no-trainer] [--compile | --no-compile] \
      [--torch-threads N] [--num-devices N]

Prints one JSON line about our train step (the trainer's jitted step on a mesh)
on a fixed synthetic batch. `trainer_over_bare_step` is the full trainer loop's
throughput (synthetic data, prefetch, metrics, checkpoints) over the step's.
Peers train the same model on the same batch in the same process:

  --compare timm   timm's model of the same architecture (the one the parity tests
                   load), in PyTorch: fp32 on the CPU; AMP bf16, channels_last (CNNs)
                   and torch.compile (--compile, default on) on CUDA. `jax_over_timm`.
  --compare flax   a minimal hand-written linen step (plain jax.jit, value_and_grad,
                   optax; no mesh, no donation). `ours_over_flax`.

The sides are timed in alternating rounds (`--repeats`, median of each), so load
from other processes hits them alike. With a peer, our step runs on one device.
Each `*compile_s` is the time from the built model to the end of the first step.
On a CPU that other jobs share, PyTorch's OpenMP threads can slow down far more
than XLA's thread pool (a team of threads waits for its slowest member); compare
with `--torch-threads 1` before trusting `jax_over_timm` there.
"""

import argparse
import json
import os

from vision_jax.bench import DTYPES
from vision_jax.cli import common


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--batch-size", type=int, required=True)
  parser.add_argument("--image-size", type=int, required=True)
  parser.add_argument("--dtype", default="auto", choices=DTYPES,
                      help="auto: bfloat16 on accelerators, float32 on the CPU")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternating timing rounds; the median round counts")
  parser.add_argument("--no-trainer", action="store_true", help="skip the full-loop measurement")
  parser.add_argument("--compare", action="append", default=[], metavar="PEER",
                      help="timm or flax (repeat, or comma-separate, for both)")
  parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="torch.compile timm's model (default: on for CUDA, off on the CPU)")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="PyTorch CPU threads for timm (default: one per core)")
  parser.add_argument("--num-devices", type=int, default=None,
                      help="devices of our step's mesh (default: all; 1 with --compare)")
  args = parser.parse_args(argv)
  compare = [p for item in args.compare for p in item.split(",") if p]
  if "timm" in compare:
    # torch and jax share the GPU: jax must not take most of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  # pylint: disable=import-outside-toplevel
  from vision_jax.bench import trials as benchmark
  from vision_jax.models import ModelError
  try:
    if "timm" in compare:
      benchmark.import_torch_and_timm()  # before TensorFlow; see import_torch_and_timm
    result = benchmark.run(args.model, args.batch_size, args.image_size, args.dtype, args.steps,
                           args.repeats, trainer=not args.no_trainer, compare=compare,
                           compile_timm=args.compile, num_devices=args.num_devices,
                           torch_threads=args.torch_threads)
  except (ModelError, benchmark.BenchmarkError) as e:
    return common.report(e)
  except benchmark.OutOfMemory as e:
    return common.report(f"{e}; use a smaller --batch-size or --image-size.", common.EXIT_FAILED)
  print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.items()}))
  return 0


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
