"""A training run from a folder source: the digits written out as PNG files in class folders reach
the accuracy of the embedded source."""

import os

import ml_collections
import numpy as np
import tensorflow as tf

from vision_jax.config_util import load_config
from vision_jax.data import digits as digits_lib
from vision_jax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 150
# The embedded source's preprocessing, as an op string: upscale 8 -> 12 bilinearly, values in [-1, 1].
DIGITS_PP = "decode(1)|resize(12)|value_range(-1, 1)"


def write_digits_folder(root: str) -> None:
  """root/<split>/<digit>/<index>.png, greyscale, values 0..16 scaled to 0..255."""
  for split in ("train", "test"):
    images, labels = digits_lib.load_digits(split)
    for i, (image, label) in enumerate(zip(images, labels)):
      directory = os.path.join(root, split, f"digit_{label}")
      os.makedirs(directory, exist_ok=True)
      pixels = np.round(image.astype(np.float32) * 255 / 16).astype(np.uint8)
      tf.io.write_file(os.path.join(directory, f"{i:04d}.png"), tf.io.encode_png(pixels))


def short_run_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = load_config(os.path.join(ROOT, "configs", "digits.py"), "smoke")
  config.data = data
  config.num_devices = 1  # cheaper than 8 simulated devices on 2 cores; same arithmetic
  config.batch_size = 64
  config.eval_batch_size = 120
  config.total_steps = STEPS
  config.log_every_steps = STEPS
  config.checkpoint_every_steps = 10 * STEPS
  config.schedule.warmup_steps = 8
  return config


def test_folder_of_digit_pngs_trains_like_the_embedded_digits(tmp_path):
  folder = str(tmp_path / "digits")
  write_digits_folder(folder)
  embedded = trainer.train_and_evaluate(
      short_run_config(ml_collections.ConfigDict({"name": "digits", "image_size": 12, "max_shift": 0})),
      str(tmp_path / "embedded"))
  from_folder = trainer.train_and_evaluate(
      short_run_config(ml_collections.ConfigDict({
          "name": f"folder:{folder}", "train_split": "train", "eval_split": "test",
          "preprocess_train": DIGITS_PP, "preprocess_eval": DIGITS_PP})),
      str(tmp_path / "folder"))
  assert embedded["eval_count"] == from_folder["eval_count"] == 360
  assert embedded["eval_top1"] > 0.95, embedded
  assert abs(from_folder["eval_top1"] - embedded["eval_top1"]) <= 0.02, (from_folder, embedded)
