r"""What the pre-training data checks cost: a generated folder of N JPEG files.

Writes N JPEG images (side --size, smooth random content, 10 classes; 80% in train/,
20% in val/), then times, on the same files:
  1. `FolderSource` opening the folder (listing + validate_files='full': TensorFlow decodes
     every file once; this existed before the checks);
  2. `report.check_before_training` (config.data.checks='error': every file read, hashed and
     decoded once with PIL, JPEGs at reduced scale; near-duplicate search across splits).

  PYTHONPATH=$PWD python experiments/data_checks_cost.py --files 10000 --size 256

The second run of each is measured (the files are in the page cache, as after
writing them; a cold disk adds its read time to both).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def write_folder(root: str, files: int, size: int) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for i in range(files):
    split = "val" if (i // 10) % 5 == 0 else "train"
    directory = os.path.join(root, split, f"class_{i % 10}")
    os.makedirs(directory, exist_ok=True)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    image.save(os.path.join(directory, f"{i:06d}.jpg"), quality=90)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--files", type=int, default=10_000)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--root", default=None, help="reuse/write the folder here")
  args = parser.parse_args()
  import ml_collections  # pylint: disable=import-outside-toplevel
  from vision_jax import data  # pylint: disable=import-outside-toplevel
  from vision_jax.data import report  # pylint: disable=import-outside-toplevel
  root = args.root or tempfile.mkdtemp(prefix="checks_cost_")
  if not os.path.isdir(os.path.join(root, "train")):
    start = time.perf_counter()
    write_folder(root, args.files, args.size)
    print(f"wrote {args.files} files in {time.perf_counter() - start:.1f} s ({root})")
  config = ml_collections.ConfigDict({
      "name": f"folder:{root}", "preprocess_train": "decode", "preprocess_eval": "decode",
      "validate_files": "full", "checks": "error"})
  for attempt in range(2):
    start, cpu = time.perf_counter(), time.process_time()
    dataset = data.get_dataset(config)
    opened = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    result = report.check_before_training(dataset, config)
    checked = time.perf_counter() - start, time.process_time() - cpu
    if attempt:
      n = dataset.num_train + dataset.num_eval
      print(f"{n} files, {os.cpu_count()} cores")
      print(f"open + validate_files='full': {opened[0]:.2f} s wall, {opened[1]:.2f} s CPU")
      print(f"check_before_training:        {checked[0]:.2f} s wall, {checked[1]:.2f} s CPU "
            f"({1000 * checked[0] / n:.2f} ms per file); cross-split copies found: "
            f"{result['cross_split']['eval_images_with_duplicates']}")


if __name__ == "__main__":
  main()
