"""The embedded real dataset: scikit-learn's handwritten digits (UCI, CC BY 4.0).

1,797 greyscale 8x8 images with values 0..16, ten classes, shipped inside the
package as `digits.npz` so that a fresh install trains something real offline.
The split is fixed and stored with the data: a stratified 80/20 split made with
`sklearn.model_selection.train_test_split(test_size=0.2, stratify=labels,
random_state=0)`, giving 1,437 training and 360 test images.
"""

from __future__ import annotations

import os

import numpy as np

_PATH = os.path.join(os.path.dirname(__file__), "digits.npz")
NUM_CLASSES = 10
SPLITS = ("train", "test", "all")


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 8, 8, 1] with values 0..16, labels int32 [N]) of a split."""
  if split not in SPLITS:
    raise ValueError(f"digits has splits {SPLITS}, not {split!r}.")
  with np.load(_PATH) as data:
    images, labels = data["images"], data["labels"].astype(np.int32)
    index = np.arange(len(labels)) if split == "all" else data[f"{split}_index"]
  return images[index][..., None], labels[index]
