"""Throughput of the input pipeline alone (no model), in images/s, ImageNet-style.

  python tools/benchmark_input.py [--images 512] [--batch-size 128] [--batches 20] \
      [--size 224] [--repeats 3] [--workdir DIR] [--cores N]

Writes `--images` generated JPEGs of about 400x350 pixels (ImageNet's typical
size; smooth random scenes plus noise, quality 90) as a folder dataset, then
times the training pipeline (folder source, shuffling, parallel decoding and
augmentation, batching; the same code the trainer uses) with two strings:

  fused:             inception_crop(224)|flip_lr|value_range(-1, 1)
                     (decodes only the crop window: tf.image.decode_and_crop_jpeg)
  decode_then_crop:  decode|inception_crop(224)|flip_lr|value_range(-1, 1)

Both draw the same crop windows (see vision_jax.data.ops.registry on seeds).
Prints one JSON line with images/s for each (the median of `--repeats`
alternating runs), their ratio, images/s per core (wall clock over the cores
used) and images per CPU-second (CPU time of the process, all threads: what one
busy core delivers, robust to other load on the machine).

`--cores N` pins the process to N of the CPUs it may use (before TensorFlow
starts, so tf.data sizes its thread pools to them): `--cores 1` measures what
one core decodes and augments, the figure to size a host by.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from vision_jax.cli.common import run

FUSED = "inception_crop({size})|flip_lr|value_range(-1, 1)"
DECODE_THEN_CROP = "decode|inception_crop({size})|flip_lr|value_range(-1, 1)"


def write_jpegs(root: str, count: int, classes: int = 10, seed: int = 0) -> float:
  """Writes root/train/<class>/<i>.jpg (and one image per class in root/val); returns mean KB."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  sizes = []
  for split, n in (("train", count), ("val", classes)):
    for i in range(n):
      height, width = int(rng.integers(330, 371)), int(rng.integers(380, 421))
      y, x = np.mgrid[0:height, 0:width] / 60.0
      channels = []
      for _ in range(3):
        f = rng.uniform(0.2, 1.5, size=(3, 2))
        phase = rng.uniform(0, 2 * np.pi, size=3)
        wave = sum(np.sin(f[k, 0] * y + f[k, 1] * x + phase[k]) for k in range(3))
        channels.append(wave)
      image = np.stack(channels, -1) * 40 + 128 + rng.normal(0, 24, (height, width, 3))
      encoded = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()
      directory = os.path.join(root, split, f"class_{i % classes:02d}")
      os.makedirs(directory, exist_ok=True)
      with open(os.path.join(directory, f"{i:06d}.jpg"), "wb") as f:
        f.write(encoded)
      sizes.append(len(encoded))
  return float(np.mean(sizes)) / 1024


def measure(root: str, spec: str, batch_size: int, batches: int,
            warmup: int = 3) -> tuple[float, float]:
  """(images per wall-clock second, images per CPU-second of this process) of the training
  iterator over `batches` batches after `warmup` batches.

  The CPU time counts every thread of the process (tf.data's included), so images per
  CPU-second is what one fully busy core delivers, even on a machine that other work
  shares (wall-clock figures then drop, CPU-time figures barely move).
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  from vision_jax import data  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({
      "name": f"folder:{root}", "train_split": "train", "eval_split": "val",
      "preprocess_train": spec, "preprocess_eval": "decode|resize(8)", "validate_files": "none"})
  iterator = data.get_dataset(config).train_iterator(batch_size, seed=0)
  for _ in range(warmup):
    next(iterator)
  from vision_jax.bench import timing  # pylint: disable=import-outside-toplevel
  batch, elapsed, cpu = timing.timed(lambda: [next(iterator) for _ in range(batches)][-1])
  assert batch["image"].shape[0] == batch_size
  return batches * batch_size / elapsed, batches * batch_size / cpu


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=512, help="generated training JPEGs")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per variant")
  parser.add_argument("--size", type=int, default=224, help="crop side")
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternating measurements of each variant; the median is reported")
  parser.add_argument("--workdir", default=None,
                      help="where to write the JPEGs (default: a temp dir)")
  parser.add_argument("--cores", type=int, default=None,
                      help="pin the process to this many CPUs (default: all it may use)")
  args = parser.parse_args(argv)
  if args.images < args.batch_size:
    print("error: --images must be at least --batch-size", file=sys.stderr)
    return 2
  allowed = sorted(os.sched_getaffinity(0))
  if args.cores is not None:
    if not 1 <= args.cores <= len(allowed):
      print(f"error: --cores {args.cores}: this process may use 1 to {len(allowed)} CPUs",
            file=sys.stderr)
      return 2
    allowed = allowed[:args.cores]
    os.sched_setaffinity(0, allowed)  # before TensorFlow is imported and sizes its pools
  import vision_jax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (before TensorFlow: quiet start-up)
  with tempfile.TemporaryDirectory() as tmp:
    root = args.workdir or tmp
    mean_kb = write_jpegs(root, args.images)
    result = {"images": args.images, "mean_jpeg_kb": round(mean_kb, 1), "crop": args.size,
              "batch_size": args.batch_size, "timed_batches": args.batches,
              "cpus": os.cpu_count(), "cores": len(allowed)}
    runs = {"fused": [], "decode_then_crop": []}
    per_cpu_s = {"fused": [], "decode_then_crop": []}
    for _ in range(args.repeats):
      for name, spec in (("fused", FUSED), ("decode_then_crop", DECODE_THEN_CROP)):
        rate, cpu_rate = measure(root, spec.format(size=args.size), args.batch_size,
                                 args.batches)
        runs[name].append(rate)
        per_cpu_s[name].append(cpu_rate)
    fused, unfused = (float(np.median(runs[k])) for k in ("fused", "decode_then_crop"))
    result.update({"fused_images_per_s": round(fused, 1),
                   "decode_then_crop_images_per_s": round(unfused, 1),
                   "fused_over_decode_then_crop": round(fused / unfused, 3),
                   "fused_images_per_s_per_core": round(fused / len(allowed), 1),
                   "decode_then_crop_images_per_s_per_core": round(unfused / len(allowed), 1),
                   **{f"{k}_images_per_cpu_s": round(float(np.median(v)), 1)
                      for k, v in per_cpu_s.items()},
                   "runs": {k: [round(v, 1) for v in vs] for k, vs in runs.items()}})
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
