"""Your own images: `config.data.name = "folder:/path/to/root"`.

Layout: one subfolder per split, one subfolder per class inside it, images in
those (subfolders of a class folder are searched too)::

  root/train/cat/001.jpg
  root/train/dog/xyz.png
  root/val/cat/...

Classes are the class folders of the training split, sorted by name (label 0 is
the first). A later split with a class folder that training lacks, a split with
no class folder or no image, are DataCheckErrors (exit 2; `report.py` checks the
rest before training). Files ending in .jpg, .jpeg or .png (any case) are read; JPEG and
PNG in colour or greyscale all decode to 3 channels by default (greyscale is
replicated; `decode(1)` gives one channel). Other files are ignored.

Files that cannot be decoded are skipped with one warning that lists their
paths (also kept in `FolderSource.skipped_files`); training never crashes on
them inside tf.data. How much is checked before training starts is
config.data.validate_files:
  "full": every file is decoded once, in parallel (catches truncated or corrupt
    files);
  "header": the JPEG/PNG signature of every file is read (fast; catches files
    that are not images at all);
  "auto" (default): "full" up to 20,000 files, "header" above;
  "none": nothing.
If an unchecked file still fails to decode during training, the run stops with a
DatasetError naming the files that fail (found by decoding the split once).

Files that become unreadable during a run (deleted, or truncated or rewritten
after the start) do not stop it: when reading fails, `exclude_unreadable` finds
the files that are gone or changed since the source was opened, decodes the
changed ones, and leaves out those that fail, with a warning naming them and the
count so far (`FolderSource.unreadable_files`); the training stream then goes on
from the same step without them. Evaluation rechecks its split the same way
before each pass. config.data.max_bad_fraction (default 0.1) bounds the share of
a split that may be unreadable, at start-up and during the run together: above
it, the data is taken to be damaged (a failing disk or mount) and the run stops
with a DatasetError. Each process checks the files it reads.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from vision_jax.config_base import DATA_DEFAULTS
from vision_jax.data.errors import DataCheckError, DatasetError, unknown_classes_message
from vision_jax.data.ops.geometry import decode_image
from vision_jax.data.source import Source, share_bounds

EXTENSIONS = (".jpg", ".jpeg", ".png")
VALIDATE_MODES = ("auto", "full", "header", "none")
FULL_CHECK_LIMIT = 20_000
DEFAULT_EVAL_SPLITS = ("val", "validation", "test")
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
_SHOWN = 20  # paths listed in a message
DEFAULT_MAX_BAD_FRACTION = DATA_DEFAULTS["max_bad_fraction"]


class FolderSource(Source):
  """Images in root/<split>/<class>/...

  Attributes:
    root: the root folder.
    name: "folder:<root>".
    classes: class names, sorted; a class's label is its index.
    num_classes: len(classes).
    files: split -> (paths, labels), sorted by class then path; undecodable files removed.
    skipped_files: paths that were found undecodable at start-up and left out.
    unreadable_files: paths that became unreadable during the run and were left out.
    max_bad_fraction: the share of a split that may be unreadable before it is an error.
  """

  def __init__(self, root: str, splits: Sequence[str], validate_files: str = "auto",
               max_bad_fraction: float | None = None):
    """Lists (and checks) the files of `splits`; the first split defines the classes.

    Raises:
      DatasetError: missing root or split folder, no class folders, no images, a
        class of a later split that the first split lacks, a bad mode, or more
        than `max_bad_fraction` of a split unreadable.
    """
    if validate_files not in VALIDATE_MODES:
      raise DatasetError(f"config.data.validate_files={validate_files!r}; choose one of "
                         f"{VALIDATE_MODES}.")
    self.max_bad_fraction = (DEFAULT_MAX_BAD_FRACTION if max_bad_fraction is None
                             else float(max_bad_fraction))
    self.unreadable_files: list[str] = []
    # Files changed after this moment are rechecked when reading fails.
    self._opened_ns = time.time_ns()
    self.root = os.path.abspath(os.path.expanduser(root))
    self.name = f"folder:{self.root}"
    if not os.path.isdir(self.root):
      raise DatasetError(f"The image folder {self.root} (config.data.name={self.name!r}) does "
                         "not exist.")
    splits = list(dict.fromkeys(splits))
    self.classes = self._class_names(splits[0])
    self.num_classes = len(self.classes)
    listed = {split: self._list(split) for split in splits}
    total = sum(len(paths) for paths, _ in listed.values())
    mode = validate_files
    if mode == "auto":
      mode = "full" if total <= FULL_CHECK_LIMIT else "header"
    bad = set()
    if mode == "header":
      bad = {p for paths, _ in listed.values() for p in paths if not _has_image_signature(p)}
    elif mode == "full":
      bad = set(find_undecodable([p for paths, _ in listed.values() for p in paths]))
    self.skipped_files = sorted(bad)
    if bad:
      logging.warning("Skipping %d image file(s) that cannot be decoded:\n  %s", len(bad),
                      _list_paths(self.skipped_files))
    self.files = {}
    self._listed = {}
    self._bad = {}
    for split, (paths, labels) in listed.items():
      keep = [i for i, p in enumerate(paths) if p not in bad]
      if not keep:
        raise DatasetError(f"The split folder {os.path.join(self.root, split)} has no readable "
                           "images.")
      self.files[split] = ([paths[i] for i in keep], np.asarray([labels[i] for i in keep],
                                                                 np.int64))
      self._listed[split] = len(paths)
      self._bad[split] = [p for p in paths if p in bad]
      self._check_bad_fraction(split)

  def _split_dir(self, split: str) -> str:
    path = os.path.join(self.root, split)
    if not os.path.isdir(path):
      present = sorted(d for d in os.listdir(self.root)
                       if os.path.isdir(os.path.join(self.root, d)))
      raise DatasetError(f"The image folder {self.root} has no split folder {split!r}; it has "
                         f"{present}. The layout is root/<split>/<class>/<image>.")
    return path

  def _class_names(self, split: str) -> list[str]:
    path = self._split_dir(split)
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
      raise DataCheckError(f"{path} has no class folders; the layout is "
                           "root/<split>/<class>/<image>.")
    return classes

  def _list(self, split: str) -> tuple[list[str], list[int]]:
    path = self._split_dir(split)
    classes = self._class_names(split)
    unknown = sorted(set(classes) - set(self.classes))
    if unknown:
      raise DataCheckError(f"{path}: " + unknown_classes_message(split, unknown, self.classes))
    paths, labels = [], []
    for label, name in enumerate(self.classes):
      class_dir = os.path.join(path, name)
      if not os.path.isdir(class_dir):
        continue
      found = []
      for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if f.lower().endswith(EXTENSIONS))
      found.sort()
      paths.extend(found)
      labels.extend([label] * len(found))
    if not paths:
      raise DataCheckError(f"The split {split!r} is empty: {path} holds no "
                           f"{'/'.join(EXTENSIONS)} files in its class folders; add images, or "
                           "name another split (config.data.train_split / eval_split).")
    return paths, labels

  def _split_files(self, split: str) -> tuple[list[str], np.ndarray]:
    if split not in self.files:
      raise DatasetError(f"The split {split!r} was not listed when {self.name} was opened "
                         f"(listed: {sorted(self.files)}).")
    return self.files[split]

  def num_examples(self, split: str) -> int:
    return len(self._split_files(split)[0])

  def train_labels(self, split: str) -> np.ndarray:
    return np.asarray(self._split_files(split)[1], np.int64)

  def share_sizes(self, split: str, process_count: int) -> list[int]:
    n = self.num_examples(split)
    return [b - a for a, b in (share_bounds(n, p, process_count) for p in range(process_count))]

  def share(self, split: str, process_index: int, process_count: int,
            training: bool) -> tuple[list[str], np.ndarray]:
    """This process's (paths, labels). Training shares come from a fixed permutation of the
    split, so that every process sees every class; evaluation shares are contiguous, in order."""
    paths, labels = self._split_files(split)
    order = np.arange(len(paths))
    if training:
      order = np.random.default_rng(len(paths)).permutation(len(paths))
    start, end = share_bounds(len(paths), process_index, process_count)
    index = order[start:end]
    return [paths[i] for i in index], labels[index]

  def read(self, split: str, process_index: int, process_count: int, *, training: bool,
           seed: int = 0) -> tf.data.Dataset:
    del seed  # the pipeline shuffles the whole share: the file list is small
    paths, labels = self.share(split, process_index, process_count, training)
    return tf.data.Dataset.from_tensor_slices(
        {"file_name": tf.constant(paths, tf.string), "label": tf.constant(labels, tf.int64)})

  def load(self, example):
    return {"image": tf.io.read_file(example["file_name"]), "label": example["label"],
            "file_name": example["file_name"]}

  def shuffle_buffer(self, share_size: int, requested: int | None) -> int:
    return max(1, min(share_size, requested or share_size))

  def exclude_unreadable(self, split: str) -> list[str]:
    """Leaves out the files of `split` that became unreadable since the source was opened.

    Only files that are gone, or were modified after the start, are decoded again, so
    this is one `stat` per file plus the decoding of the changed ones.

    Returns:
      The files newly left out (empty: nothing changed on disk).
    Raises:
      DatasetError: the split's unreadable share is now above max_bad_fraction, or
        no readable file is left.
    """
    paths, labels = self._split_files(split)
    gone, changed = set(), []
    for path in paths:
      try:
        if os.stat(path).st_mtime_ns >= self._opened_ns:
          changed.append(path)
      except OSError:
        gone.add(path)
    bad = gone | set(find_undecodable(changed))
    if not bad:
      return []
    new = [p for p in paths if p in bad]
    keep = [i for i, p in enumerate(paths) if p not in bad]
    self.files[split] = ([paths[i] for i in keep], labels[keep])
    self._bad[split].extend(new)
    self.unreadable_files.extend(new)
    logging.warning("%d image file(s) of split %r became unreadable during the run and are "
                    "skipped from now on (%d of %d files of the split unreadable so far):\n  %s",
                    len(new), split, len(self._bad[split]), self._listed[split], _list_paths(new))
    self._check_bad_fraction(split)
    if not keep:
      raise DatasetError(f"No readable image is left in {os.path.join(self.root, split)}: all "
                         f"{self._listed[split]} files are unreadable (is the disk still mounted?).")
    return new

  def _check_bad_fraction(self, split: str) -> None:
    bad, listed = self._bad[split], self._listed[split]
    if listed and len(bad) / listed > self.max_bad_fraction:
      raise DatasetError(
          f"{len(bad)} of {listed} image files ({100 * len(bad) / listed:.1f}%) of split "
          f"{split!r} in {self.root} are unreadable, more than config.data.max_bad_fraction="
          f"{self.max_bad_fraction:g}; the data looks damaged (a failing disk or mount?). Repair "
          f"it, or raise config.data.max_bad_fraction. Unreadable:\n  {_list_paths(bad)}")

  def explain_failure(self, split: str, error: Exception) -> str:
    paths = self._split_files(split)[0] if split in self.files else []
    bad = find_undecodable(paths)
    if not bad:
      return f"Reading split {split!r} of {self.name} failed: {error}"
    return (f"{len(bad)} image file(s) of {os.path.join(self.root, split)} cannot be decoded "
            f"(checked because training failed: {type(error).__name__}):\n  {_list_paths(bad)}\n"
            "Remove them, or set config.data.validate_files='full' to skip them.")


def default_eval_split(root: str) -> str:
  """The first of val, validation, test that is a subfolder of `root`."""
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DatasetError(f"The image folder {root} (config.data.name='folder:{root}') does not "
                       "exist.")
  for split in DEFAULT_EVAL_SPLITS:
    if os.path.isdir(os.path.join(root, split)):
      return split
  raise DatasetError(f"Set config.data.eval_split: {root} has none of the subfolders "
                     f"{DEFAULT_EVAL_SPLITS}.")


def _has_image_signature(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError:
    return False
  return any(head.startswith(sig) for sig in _SIGNATURES)


def find_undecodable(paths: Sequence[str]) -> list[str]:
  """The paths among `paths` that TensorFlow cannot read or decode (decodes all, in parallel)."""
  if not paths:
    return []
  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64),
                                           tf.constant(list(paths), tf.string)))
  ds = ds.map(lambda i, p: (i, tf.shape(decode_image(tf.io.read_file(p), 3))),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.ignore_errors()
  good = {int(i) for i, _ in ds.as_numpy_iterator()}
  return [p for i, p in enumerate(paths) if i not in good]


def _list_paths(paths: Sequence[str]) -> str:
  shown = "\n  ".join(paths[:_SHOWN])
  more = f"\n  ... and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
  return shown + more
