"""Image files on disk: finding them, decoding them with a preprocessing string, class names.

A leaf module (numpy; TensorFlow imported on use): `inference`, the command-line tools and
`weights.hub` (`vision_jax.pretrained(...).classify`) all read images through it.
"""

from __future__ import annotations

import glob
import os
from typing import Callable, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_LABELS_DIR = os.path.join(os.path.dirname(__file__), "labels")


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet-1k class names in the standard (sorted synset) order."""
  with open(os.path.join(_LABELS_DIR, "imagenet1k.txt"), encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def list_images(specs: Sequence[str]) -> list[str]:
  """Image files from paths, globs and folders (searched recursively), in a stable order."""
  files: list[str] = []
  for spec in specs:
    if os.path.isdir(spec):
      for root, _, names in sorted(os.walk(spec)):
        files += [os.path.join(root, n) for n in sorted(names)
                  if n.lower().endswith(IMAGE_EXTENSIONS)]
    elif any(ch in spec for ch in "*?["):
      files += sorted(glob.glob(spec, recursive=True))
    else:
      files.append(spec)
  seen: set[str] = set()
  return [f for f in files if not (f in seen or seen.add(f))]


def read_images(paths: Sequence[str], preprocess: str,
                warn: Callable[[str], None] = print) -> tuple[list[str], np.ndarray]:
  """Decodes and preprocesses image files; undecodable ones are named (via `warn`) and skipped.

  Returns:
    (the paths that were read, float32 [N, H, W, C] model inputs).
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from vision_jax.data import ops  # pylint: disable=import-outside-toplevel
  fn = ops.get_preprocess_fn(preprocess, outputs=("image",))
  good, arrays = [], []
  for path in paths:
    try:
      with open(path, "rb") as f:
        contents = f.read()
      image = fn({"image": tf.constant(contents)})["image"]
      arrays.append(np.asarray(image, np.float32))
      good.append(path)
    except Exception as e:  # pylint: disable=broad-except
      message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      warn(f"skipping {path}: cannot decode it as an image ({message[:200]})")
  if not arrays:
    return [], np.zeros((0, 1, 1, 1), np.float32)
  return good, np.stack(arrays)
