"""The dataset report, and the checks that run on it before training.

`inspect_dataset(...)` reads a source once (every file of a `folder:`, the
arrays of `digits`, the records of a tfds split) and returns a JSON-able report:
classes and their counts per split, image sizes and aspect ratios, undecodable,
truncated and empty files, colour modes, files skipped for their extension, exact
duplicates inside a split and across splits (a hash of the file's bytes, or of
the array), near duplicates across splits (a perceptual hash, confirmed on a
thumbnail), classes missing from a split. `findings(report, mode, ...)` turns it
into a list of problems, each an error, a warning or a note.

`check_before_training(dataset, data_config)` runs both before the first step of
a run (`trainer.setup_run`) on folder and in-memory (digits) sources; a tfds
dataset is checked from its metadata only (class count, split sizes), the tool
reads it all. `config.data.checks` says what happens:
  'error' (default): problems that make the evaluation meaningless (leakage
     between splits above `config.data.max_cross_split_duplicates`, default 0;
     evaluation classes that training lacks or the reverse; a class without
     training images) stop the run with a DataCheckError;
  'warn': they are logged as warnings;
  'off': the files are not read (no cost); only what needs no reading is checked.
Degenerate data is refused whatever the mode: fewer than two classes, a single
label in the training split, an empty split, labels outside the model's classes,
identical or flat images only (see docs/failures.md).

Near duplicates. Each image is reduced to grey, resized to 32x32 and hashed by
the signs of its 8x8 lowest DCT frequencies against their median (pHash, 64
bits). A training/evaluation pair whose hashes differ in at most
NEAR_DUPLICATE_BITS bits is a candidate; it is a near duplicate when the
Pearson correlation of their 16x16 grey thumbnails is at least
NEAR_DUPLICATE_CORRELATION as well. On the embedded digits (1,797 images 8x8,
all 1,613,706 pairs) no pair of distinct images passes both tests, while
resized and JPEG-recompressed copies do (experiments/near_duplicates.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from vision_jax.data.errors import DataCheckError, unknown_classes_message
from vision_jax.data.errors import name_list as _names

CHECK_MODES = ("error", "warn", "off")
SCHEMA_VERSION = 1
NEAR_DUPLICATE_BITS = 10
NEAR_DUPLICATE_CORRELATION = 0.995
THUMB_SIDE = 16
IMBALANCE_RATIO = 5.0  # largest / smallest class count above which the report warns
NEAR_PAIR_LIMIT = 400_000_000  # train x eval pairs compared by hash; above, only exact duplicates
READ_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGE_LIKE_EXTENSIONS = (".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif", ".jfif",
                         ".avif", ".jp2", ".ppm", ".pgm")
COMMON_MODES = ("L", "RGB", "RGBA")


# ---------------------------------------------------------------------------
# One image.
# ---------------------------------------------------------------------------
def _dct_matrix(n: int) -> np.ndarray:
  k, i = np.arange(n)[:, None], np.arange(n)[None]
  m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  m[0] /= np.sqrt(2.0)
  return m.astype(np.float32)


_DCT32 = _dct_matrix(32)


def perceptual_hash(grey: Any) -> int:
  """64-bit pHash of a PIL 'L' image: signs of the 8x8 lowest DCT terms of its 32x32 version."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  x = np.asarray(grey.resize((32, 32), Image.BILINEAR), np.float32)
  low = (_DCT32 @ x @ _DCT32.T)[:8, :8].ravel()
  bits = low > np.median(low[1:])
  return int(np.packbits(bits).view(">u8")[0])


def thumbnail(grey: Any) -> np.ndarray:
  """uint8 [THUMB_SIDE, THUMB_SIDE] grey thumbnail (the near-duplicate confirmation)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(grey.resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), np.uint8)


def content_hash(data: bytes) -> int:
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclasses.dataclass
class ImageInfo:
  """What the report keeps of one image (None fields: it could not be decoded)."""

  name: str
  label: int
  exact: int
  problem: str | None = None
  mode: str | None = None
  height: int = 0
  width: int = 0
  phash: int = 0
  thumb: np.ndarray | None = None
  constant: bool = False


def describe_bytes(name: str, label: int, data: bytes) -> ImageInfo:
  """Decodes encoded image bytes once (PIL; JPEGs at a reduced scale) and describes them."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  info = ImageInfo(name=name, label=label, exact=content_hash(data))
  if not data:
    info.problem = "empty file"
    return info
  try:
    with Image.open(io.BytesIO(data)) as image:
      info.mode, (info.width, info.height) = image.mode, image.size
      if image.format == "JPEG":
        image.draft("L", (64, 64))  # decode at 1/2..1/8 scale: the hash needs 32x32
      image.load()
      _describe_pixels(info, image)
  except UnidentifiedImageError:
    info.problem = "not an image (undecodable)"
  except Image.DecompressionBombError as e:
    info.problem = f"too large to decode safely ({e})"
  except (OSError, SyntaxError, ValueError) as e:
    info.problem = "truncated" if "truncated" in str(e).lower() else f"undecodable ({e})"
  return info


def describe_array(name: str, label: int, pixels: np.ndarray, low: float = 0.0,
                   high: float = 255.0) -> ImageInfo:
  """Describes an in-memory image [H, W, C] whose values span [low, high]."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  pixels = np.asarray(pixels)
  info = ImageInfo(name=name, label=label, exact=content_hash(pixels.tobytes()))
  info.height, info.width = int(pixels.shape[0]), int(pixels.shape[1])
  channels = pixels.shape[2] if pixels.ndim == 3 else 1
  info.mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels} channels")
  grey = pixels.mean(axis=-1) if pixels.ndim == 3 else pixels
  scale = 255.0 / (high - low) if high > low else 0.0
  grey = np.clip(np.round((grey - low) * scale), 0, 255).astype(np.uint8)
  _describe_pixels(info, Image.fromarray(grey))
  return info


def _describe_pixels(info: ImageInfo, image: Any) -> None:
  grey = image.convert("L")
  low, high = grey.getextrema()
  info.constant = low == high
  info.phash = perceptual_hash(grey)
  info.thumb = thumbnail(grey)


# ---------------------------------------------------------------------------
# Reading sources.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class SplitScan:
  """Every example of one split, described."""

  name: str
  images: list[ImageInfo]
  class_folders: list[str] | None = None  # folder sources: the class folders present
  skipped_files: list[str] = dataclasses.field(default_factory=list)


def _read_file(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def scan_folder(root: str, splits: Sequence[str], workers: int | None = None
                ) -> tuple[list[str], dict[str, SplitScan]]:
  """(classes, split -> SplitScan) of root/<split>/<class>/...; every file is read once.

  Classes are the class folders of the first split, sorted (as `FolderSource`);
  images of class folders that the first split lacks get label -1.
  """
  root = os.path.abspath(os.path.expanduser(root))
  folders = {}
  for split in splits:
    path = os.path.join(root, split)
    if not os.path.isdir(path):
      present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
          if os.path.isdir(root) else []
      raise DataCheckError(f"{root} has no split folder {split!r} (it has {present}); the layout "
                           "is root/<split>/<class>/<image>.")
    folders[split] = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  classes = folders[splits[0]]
  jobs, scans = [], {}
  for split in splits:
    scan = SplitScan(name=split, images=[], class_folders=folders[split])
    for class_name in folders[split]:
      label = classes.index(class_name) if class_name in classes else -1
      for dirpath, dirnames, filenames in os.walk(os.path.join(root, split, class_name)):
        dirnames.sort()
        for f in sorted(filenames):
          full = os.path.join(dirpath, f)
          if f.lower().endswith(READ_EXTENSIONS):
            jobs.append((split, full, label))
          else:
            scan.skipped_files.append(full)
    scans[split] = scan
  workers = workers or min(16, 2 * (os.cpu_count() or 1))

  def describe(job):
    split, path, label = job
    try:
      data = _read_file(path)
    except OSError as e:
      return split, ImageInfo(name=path, label=label, exact=0, problem=f"unreadable ({e.strerror})")
    return split, describe_bytes(path, label, data)

  # PIL releases the GIL while it decodes, so threads use every core.
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for split, info in pool.map(describe, jobs, chunksize=64):
      scans[split].images.append(info)
  return classes, scans


def scan_arrays(name: str, images: np.ndarray, labels: np.ndarray, low: float,
                high: float) -> SplitScan:
  """A split held in memory (digits): images [N, H, W, C] with values in [low, high]."""
  return SplitScan(name=name, images=[
      describe_array(f"{name}[{i}]", int(label), image, low, high)
      for i, (image, label) in enumerate(zip(images, labels))])


def scan_tfds(source: Any, split: str, max_examples: int | None = None) -> SplitScan:
  """The records of a tfds split (encoded images are decoded here, once)."""
  ds = source.read(split, 0, 1, training=False)
  if max_examples:
    ds = ds.take(max_examples)
  scan = SplitScan(name=split, images=[])
  for i, example in enumerate(ds.as_numpy_iterator()):
    image, label = example["image"], int(example["label"])
    if isinstance(image, bytes):
      scan.images.append(describe_bytes(f"{split}[{i}]", label, image))
    else:
      scan.images.append(describe_array(f"{split}[{i}]", label, np.asarray(image)))
  return scan


def scan_dataset(dataset: Any, max_examples: int | None = None
                 ) -> tuple[list[str], dict[str, SplitScan], str]:
  """(class names, scans of the training and evaluation splits, source name) of any dataset
  that `get_dataset` builds (digits and other in-memory arrays, folder:, tfds)."""
  inner = getattr(dataset, "dataset", dataset)  # a MixedDataset wraps the real one
  source = getattr(inner, "source", None)
  if source is None:  # in-memory arrays: what the model sees without augmentation
    train = inner.preprocess_train(inner.train[0], None)
    evaluation = inner.preprocess_eval(inner.eval[0], None)
    if train.ndim == 5:  # two views
      train = train[:, 0]
    low = float(min(train.min(), evaluation.min()))
    high = float(max(train.max(), evaluation.max()))
    names = [str(i) for i in range(inner.num_classes)]
    scans = {"train": scan_arrays("train", train, inner.train[1], low, high),
             "eval": scan_arrays("eval", evaluation, inner.eval[1], low, high)}
    return names, scans, getattr(inner, "name", "arrays")
  if hasattr(source, "root"):
    classes, scans = scan_folder(source.root, [inner.train_split, inner.eval_split])
    return classes, scans, source.name
  classes = _tfds_class_names(source)
  scans = {split: scan_tfds(source, split, max_examples)
           for split in dict.fromkeys([inner.train_split, inner.eval_split])}
  return classes, scans, source.name


def _tfds_class_names(source: Any) -> list[str]:
  try:
    return list(source.builder.info.features[source.label_key].names)
  except (AttributeError, KeyError, TypeError):
    return [str(i) for i in range(source.num_classes)]


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------
def _histogram(values: np.ndarray, edges: Sequence[float]) -> dict[str, Any]:
  counts, _ = np.histogram(values, bins=np.asarray(edges, np.float64))
  return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


SIZE_EDGES = (0, 16, 32, 64, 96, 128, 224, 384, 512, 1024, 4096, 1e9)
ASPECT_EDGES = (0, 0.5, 0.75, 0.9, 1.1, 1.34, 2.0, 1e9)


def _split_section(scan: SplitScan, classes: list[str], expected: int | None) -> dict[str, Any]:
  good = [im for im in scan.images if im.problem is None]
  labels = np.asarray([im.label for im in scan.images], np.int64)
  counts = {name: int(np.sum(labels == i)) for i, name in enumerate(classes)}
  present = [c for c in counts.values() if c > 0]
  heights = np.asarray([im.height for im in good], np.float64)
  widths = np.asarray([im.width for im in good], np.float64)
  modes: dict[str, int] = {}
  for im in good:
    modes[im.mode] = modes.get(im.mode, 0) + 1
  usable = [i for i, im in enumerate(scan.images) if im.problem is None]
  groups = [[usable[k] for k in g] for g in _groups([scan.images[i].exact for i in usable])]
  duplicates = [[scan.images[i].name for i in g] for g in groups]
  conflicting = [names for g, names in zip(groups, duplicates)
                 if len({scan.images[i].label for i in g}) > 1]
  section = {
      "examples": len(scan.images),
      "class_counts": counts,
      "unknown_label_examples": int(np.sum((labels < 0) | (labels >= len(classes)))),
      "imbalance_ratio": (max(present) / min(present)) if present else None,
      "problem_files": [{"name": im.name, "problem": im.problem}
                        for im in scan.images if im.problem is not None],
      "skipped_files": scan.skipped_files,
      "modes": modes,
      "constant_images": int(sum(im.constant for im in good)),
      "distinct_images": len({im.thumb.tobytes() for im in good}),
      "duplicate_groups": duplicates,
      "conflicting_label_groups": conflicting,
      "sizes": {
          "height": _summary(heights), "width": _summary(widths),
          "min_side_histogram": _histogram(np.minimum(heights, widths), SIZE_EDGES),
          "aspect_ratio_histogram": _histogram(widths / np.maximum(heights, 1), ASPECT_EDGES),
      },
  }
  if expected:
    sides = np.minimum(heights, widths)
    section["sizes"]["smaller_than_input"] = int(np.sum(sides < expected))
    section["sizes"]["under_half_the_input"] = int(np.sum(sides < expected / 2))
  if scan.class_folders is not None:
    section["class_folders"] = scan.class_folders
  return section


def _summary(values: np.ndarray) -> dict[str, float | None]:
  if not len(values):
    return {"min": None, "median": None, "max": None}
  return {"min": float(values.min()), "median": float(np.median(values)),
          "max": float(values.max())}


def _groups(hashes: Sequence[int]) -> list[list[int]]:
  """Index groups (size > 1) of equal hashes."""
  seen: dict[int, list[int]] = {}
  for i, h in enumerate(hashes):
    seen.setdefault(h, []).append(i)
  return [g for g in seen.values() if len(g) > 1]


def cross_split_duplicates(train: SplitScan, evaluation: SplitScan) -> dict[str, Any]:
  """Exact (same bytes) and near (pHash + thumbnail) duplicates between two splits."""
  train_ok = [im for im in train.images if im.problem is None]
  eval_ok = [im for im in evaluation.images if im.problem is None]
  by_hash: dict[int, ImageInfo] = {}
  for im in train_ok:
    by_hash.setdefault(im.exact, im)
  exact = [(by_hash[im.exact], im) for im in eval_ok if im.exact in by_hash]
  exact_names = {e.name for _, e in exact}
  near, checked = [], len(train_ok) * len(eval_ok) <= NEAR_PAIR_LIMIT
  if checked and train_ok and eval_ok:
    # Flat images all share one hash: they are left to the exact comparison.
    t_idx = [i for i, im in enumerate(train_ok) if not im.constant]
    e_idx = [j for j, im in enumerate(eval_ok) if not im.constant and im.name not in exact_names]
    t_hash = np.asarray([train_ok[i].phash for i in t_idx], np.uint64)
    t_thumb = _normalised([train_ok[i].thumb for i in t_idx])
    e_thumb = _normalised([eval_ok[j].thumb for j in e_idx])
    step = max(1, 20_000_000 // max(len(t_idx), 1))  # about 160 MB of XORed hashes at a time
    for start in range(0, len(e_idx), step):
      chunk = e_idx[start:start + step]
      e_hash = np.asarray([eval_ok[j].phash for j in chunk], np.uint64)
      distance = np.bitwise_count(e_hash[:, None] ^ t_hash[None, :])
      for a, b in zip(*np.nonzero(distance <= NEAR_DUPLICATE_BITS)):
        corr = float(e_thumb[start + a] @ t_thumb[b])
        if corr >= NEAR_DUPLICATE_CORRELATION:
          near.append((train_ok[t_idx[b]], eval_ok[chunk[a]], int(distance[a, b]), corr))
    near.sort(key=lambda p: (p[1].name, -p[3]))
    first = {}
    for pair in near:
      first.setdefault(pair[1].name, pair)  # the closest training image of each eval image
    near = list(first.values())
  return {
      "train_split": train.name, "eval_split": evaluation.name,
      "exact": [{"train": t.name, "eval": e.name} for t, e in exact],
      "near": [{"train": t.name, "eval": e.name, "hash_distance": d, "correlation": round(c, 4)}
               for t, e, d, c in near],
      "eval_images_with_duplicates": len(exact) + len(near),
      "near_duplicates_checked": checked,
      "near_duplicate_rule": {"max_hash_distance": NEAR_DUPLICATE_BITS,
                              "min_thumbnail_correlation": NEAR_DUPLICATE_CORRELATION},
  }


def _normalised(thumbs: list[np.ndarray]) -> np.ndarray:
  if not thumbs:
    return np.zeros((0, THUMB_SIDE * THUMB_SIDE), np.float32)
  x = np.stack(thumbs).reshape(len(thumbs), -1).astype(np.float32)
  x -= x.mean(axis=1, keepdims=True)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def build_report(classes: list[str], scans: dict[str, SplitScan], source: str,
                 train_split: str, eval_split: str, expected_input: int | None = None
                 ) -> dict[str, Any]:
  """The JSON-able report of scanned splits (schema: docs/data.md, 'The dataset report')."""
  report = {
      "schema_version": SCHEMA_VERSION, "source": source, "classes": list(classes),
      "train_split": train_split, "eval_split": eval_split, "expected_input": expected_input,
      "splits": {name: _split_section(scan, classes, expected_input)
                 for name, scan in scans.items()},
  }
  if eval_split in scans and train_split in scans and eval_split != train_split:
    report["cross_split"] = cross_split_duplicates(scans[train_split], scans[eval_split])
  elif eval_split == train_split:
    n = len(scans[train_split].images)
    report["cross_split"] = {"train_split": train_split, "eval_split": eval_split, "exact": [],
                             "near": [], "eval_images_with_duplicates": n,
                             "near_duplicates_checked": False, "same_split": True}
  return report


# ---------------------------------------------------------------------------
# Findings.
# ---------------------------------------------------------------------------
def findings(report: dict[str, Any], mode: str = "error",
             max_cross_split_duplicates: int = 0) -> list[dict[str, str]]:
  """The problems of a report: [{'code', 'severity' ('error'|'warning'|'note'), 'message'}].

  Degenerate data is an error in every mode; leakage and class mismatches between
  splits are errors under 'error' and warnings under 'warn'; the rest are warnings.
  """
  gated = "error" if mode == "error" else "warning"
  out: list[dict[str, str]] = []

  def add(code, severity, message):
    out.append({"code": code, "severity": severity, "message": message})

  def warn_if_any(code, items, message):
    # `message(items)` is only built for a non-empty `items`: several messages name items[0].
    if items:
      add(code, "warning", message(items))

  classes = report["classes"]
  train_name, eval_name = report["train_split"], report["eval_split"]
  splits = report["splits"]
  train, evaluation = splits.get(train_name), splits.get(eval_name)
  fix_folder = " Fix the data, or set config.data.checks='warn' to train anyway."
  if len(classes) < 2:
    add("too_few_classes", "error",
        f"{report['source']} has {len(classes)} class{'es' if len(classes) != 1 else ''} "
        f"({_names(classes)}): a classifier needs at least 2; add a folder (or examples) for "
        "each other class.")
  for name, section in ((train_name, train), (eval_name, evaluation)):
    if section is not None and section["examples"] == 0:
      add("empty_split", "error", f"The {name!r} split of {report['source']} holds no "
          "examples; put images in it (root/<split>/<class>/<image>) or name another split.")
  if train is not None and train["examples"]:
    present = [c for c, n in train["class_counts"].items() if n > 0]
    if len(classes) >= 2 and len(present) == 1:
      add("single_label", "error",
          f"Every example of the training split {train_name!r} has the label {present[0]!r}: "
          "nothing can be learnt from one label; add examples of the other classes.")
    elif len(present) > 1 and len(present) < len(classes):
      empty = [c for c, n in train["class_counts"].items() if n == 0]
      add("class_without_examples", gated,
          f"The training split {train_name!r} has no example of class(es) {_names(empty)}; the "
          f"model cannot learn them. Add images, or remove the class folder(s)." + fix_folder)
    ok = train["examples"] - len(train["problem_files"])
    if ok > 1 and train["distinct_images"] == 1:
      add("identical_images", "error",
          f"All {ok} training images of {report['source']} are identical: nothing can be "
          "learnt from them; check how the images were exported.")
    elif ok > 1 and train["constant_images"] == ok:
      add("flat_images", "error",
          f"All {ok} training images of {report['source']} are a single flat colour: they hold "
          "no picture; check how the images were exported.")
    elif train["constant_images"]:
      add("some_flat_images", "warning", f"{train['constant_images']} training image(s) are a "
          "single flat colour.")
  for name, section in ((train_name, train), (eval_name, evaluation)):
    if section is None:
      continue
    if section["unknown_label_examples"] and section.get("class_folders") is None:
      # (a folder's unknown class folders are named by eval_classes_unknown below)
      add("labels_out_of_range", "error",
          f"{section['unknown_label_examples']} example(s) of split {name!r} have labels outside "
          f"the {len(classes)} classes of the model (0..{len(classes) - 1}); fix the labels or "
          "config.data.label_key.")
    warn_if_any("undecodable_files", section["problem_files"], lambda bad: (
        f"{len(bad)} file(s) of split {name!r} cannot be used and are skipped: "
        + _names(f"{b['name']} ({b['problem']})" for b in bad)))
    image_like = [p for p in section["skipped_files"]
                  if os.path.splitext(p)[1].lower() in IMAGE_LIKE_EXTENSIONS]
    warn_if_any("skipped_extensions", image_like, lambda found: (
        f"{len(found)} image file(s) of split {name!r} are skipped for their extension "
        f"(only {'/'.join(READ_EXTENSIONS)} are read): {_names(found)}; convert them."))
    odd = {m: n for m, n in section["modes"].items() if m not in COMMON_MODES}
    warn_if_any("colour_modes", odd, lambda modes: (
        f"Split {name!r} has images in colour modes {modes}; they are decoded to RGB (or grey "
        "with decode(1)); check that their colours survive (CMYK and 16-bit images may not)."))
    tiny = section["sizes"].get("under_half_the_input", 0)
    if tiny and tiny * 2 >= section["examples"]:
      add("small_images", "warning",
          f"{tiny} of {section['examples']} images of split {name!r} have a shorter side under "
          f"half the model's input ({report['expected_input']} px): they are upscaled and hold "
          "little detail; a model or input size nearer theirs may do better.")
    warn_if_any("duplicates_within_split", section["duplicate_groups"], lambda groups: (
        f"Split {name!r} holds {len(groups)} group(s) of identical files, e.g. "
        f"{_names(groups[0])}."))
    warn_if_any("conflicting_labels", section["conflicting_label_groups"], lambda groups: (
        f"{len(groups)} identical file(s) of split {name!r} sit in different classes, e.g. "
        f"{_names(groups[0])}; remove the wrong copies."))
  if train is not None and train["imbalance_ratio"] and train["imbalance_ratio"] >= IMBALANCE_RATIO:
    counts = {c: n for c, n in train["class_counts"].items() if n > 0}
    small, large = min(counts, key=counts.get), max(counts, key=counts.get)
    add("imbalance", "warning",
        f"The training classes are imbalanced: {large!r} has {counts[large]} examples, "
        f"{small!r} {counts[small]} ({train['imbalance_ratio']:.1f}x); consider "
        "config.data.balance='sample' or 'loss', and read eval_balanced_top1.")
  if evaluation is not None and train is not None and eval_name != train_name:
    folders = evaluation.get("class_folders")
    extra = sorted(set(folders) - set(classes)) if folders is not None else []
    if extra:
      message = unknown_classes_message(eval_name, extra, classes)
      add("eval_classes_unknown", "error", message[0].upper() + message[1:])
    missing = [c for c in classes if train["class_counts"].get(c) and
               not evaluation["class_counts"].get(c)]
    if missing:
      add("eval_classes_missing", gated,
          f"The evaluation split {eval_name!r} has no example of the training class(es) "
          f"{_names(missing)}, so its accuracy says nothing about them; add images of each "
          "class to it." + fix_folder)
  cross = report.get("cross_split")
  if cross is not None:
    count = cross["eval_images_with_duplicates"]
    if cross.get("same_split"):
      add("eval_is_train", gated,
          f"The evaluation split is the training split ({eval_name!r}): its accuracy measures "
          "memory, not generalisation; name another config.data.eval_split." + fix_folder)
    elif count > max_cross_split_duplicates:
      pairs = [f"{p['eval']} = {p['train']}" for p in cross["exact"] + cross["near"]]
      add("cross_split_duplicates", gated,
          f"{count} image(s) of the evaluation split {eval_name!r} are also in the training split "
          f"{train_name!r} ({len(cross['exact'])} exact, {len(cross['near'])} near copies; "
          f"allowed: config.data.max_cross_split_duplicates={max_cross_split_duplicates}), so "
          f"the evaluation overstates accuracy: {_names(pairs)}. Remove the copies from one "
          "split, or raise config.data.max_cross_split_duplicates.")
    if not cross.get("near_duplicates_checked", True) and not cross.get("same_split"):
      add("near_duplicates_not_checked", "note",
          "Near duplicates were not searched (too many pairs); exact ones were.")
  return out


# ---------------------------------------------------------------------------
# Before training.
# ---------------------------------------------------------------------------
def check_before_training(dataset: Any, data_config: Any) -> dict[str, Any] | None:
  """Refuses degenerate data and (by config.data.checks) leakage, before any compilation.

  Returns:
    The report (None when config.data.checks='off' or nothing could be read).
  Raises:
    DataCheckError: the first error finding, in one line; the others are counted.
  """
  get = data_config.get
  mode = get("checks") or "error"
  if mode not in CHECK_MODES:
    raise DataCheckError(f"config.data.checks={mode!r}; choose one of {CHECK_MODES}.")
  max_dup = get("max_cross_split_duplicates")
  max_dup = 0 if max_dup is None else int(max_dup)
  name = get("name")
  inner = getattr(dataset, "dataset", dataset)
  structural = _structural_findings(inner, name)
  report = None
  if any(f["severity"] == "error" for f in structural):
    found = structural
  elif mode != "off" and name != "synthetic" and _scannable(inner):
    key = _arrays_key(inner)
    report = _REPORTS.get(key) if key else None
    if report is None:
      classes, scans, source = scan_dataset(dataset)
      train_split = getattr(inner, "train_split", "train")
      eval_split = getattr(inner, "eval_split", "eval")
      report = build_report(classes, scans, source, train_split, eval_split)
      if key:
        _REPORTS.clear()  # one entry: runs in one process mostly repeat the same data
        _REPORTS[key] = report
    found = findings(report, mode, max_dup)
  else:
    found = structural
  errors = [f for f in found if f["severity"] == "error"]
  for f in found:
    if f["severity"] == "warning":
      logging.warning("Data check (%s): %s", f["code"], f["message"])
  if errors:
    more = (f" ({len(errors) - 1} more problem(s): {', '.join(e['code'] for e in errors[1:])}; "
            "`python tools/inspect_data.py` lists them.)") if len(errors) > 1 else ""
    raise DataCheckError(errors[0]["message"] + more)
  return report


_REPORTS: dict[bytes, dict[str, Any]] = {}


def _arrays_key(inner: Any) -> bytes | None:
  """A content key of an in-memory dataset (its reports are reused within a process: tests and
  notebooks train the digits many times); None for file sources, which can change on disk."""
  if getattr(inner, "source", None) is not None:
    return None
  digest = hashlib.blake2b(digest_size=16)
  for part in (*inner.train, *inner.eval):
    part = np.ascontiguousarray(part)
    digest.update(str((part.shape, part.dtype)).encode())
    digest.update(part.tobytes())
  return digest.digest()


def _scannable(inner: Any) -> bool:
  """Whether the checks before training read the images: in-memory arrays and folders yes;
  a tfds dataset (published, curated splits, possibly huge) is checked from its metadata
  only, and `tools/inspect_data.py` reads it all."""
  source = getattr(inner, "source", None)
  if source is None or hasattr(source, "root"):
    return True
  logging.info("Data checks: %s is a tfds dataset; only its metadata is checked before training "
               "(python tools/inspect_data.py --data %s reads it all).", source.name, source.name)
  return False


def _structural_findings(inner: Any, name: str) -> list[dict[str, str]]:
  """What needs no reading of the images: class count, split sizes, and the labels where the
  source knows them without reading (in-memory arrays, folders)."""
  out = []

  def error(code, message):
    out.append({"code": code, "severity": "error", "message": message})

  num_classes = int(inner.num_classes)
  if num_classes < 2:
    error("too_few_classes", f"{name} has {num_classes} class(es): a classifier needs at least "
          "2; add examples of another class.")
  for attr, split in (("num_train", "training"), ("num_eval", "evaluation")):
    if hasattr(inner, attr) and int(getattr(inner, attr)) == 0:
      error("empty_split", f"The {split} split of {name} holds no examples; give it some, or "
            "name another split.")
  for field in ("preprocess_train", "preprocess_eval"):
    depth = _onehot_depth(getattr(getattr(inner, field, None), "spec", None))
    if depth is not None and depth != num_classes:
      error("labels_out_of_range", f"config.data.{field} makes one-hot labels of {depth} "
            f"classes, but {name} has {num_classes} (the model's classes); write "
            f"onehot({num_classes}).")
  source = getattr(inner, "source", None)
  if source is None:
    labels = np.asarray(inner.train[1])
  elif hasattr(source, "root"):
    labels = source.train_labels(inner.train_split)
  else:
    return out
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    error("labels_out_of_range", f"{int(np.sum((labels < 0) | (labels >= num_classes)))} "
          f"training label(s) of {name} are outside the model's {num_classes} classes "
          f"(0..{num_classes - 1}); fix the labels or config.data.num_classes.")
  elif num_classes >= 2 and len(labels) and len(np.unique(labels)) == 1:
    error("single_label", f"Every training example of {name} has the label {int(labels[0])}: "
          "nothing can be learnt from one label; add examples of the other classes.")
  return out


def _onehot_depth(spec: str | None) -> int | None:
  if not spec or "onehot" not in spec:
    return None
  from vision_jax.data.opstring import parse  # pylint: disable=import-outside-toplevel
  for call in parse(spec):
    if call.name == "onehot":
      kwargs = dict(call.kwargs)
      return call.args[0] if call.args else kwargs.get("depth")
  return None


def check_batch_size(num_train: int, batch_size: int, process_count: int = 1) -> None:
  """A training split smaller than one batch never yields a step: refused before compiling."""
  if num_train < batch_size:
    raise DataCheckError(
        f"The training split has {num_train} examples, fewer than config.batch_size="
        f"{batch_size}: not one batch can be drawn (the incomplete tail of an epoch is "
        f"dropped); lower config.batch_size to at most {num_train}, or add images.")


def check_geometry(shapes: dict[str, tuple[int, ...]], input_shape: tuple[int, ...],
                   model_name: str) -> None:
  """Refuses an input that the model's spatial reduction leaves empty.

  Args:
    shapes: name -> shape of every intermediate output of one forward pass (abstract).
    input_shape: the batch shape [N, H, W, C] given to the model.
    model_name: for the message.
  """
  empty = [(k, s) for k, s in shapes.items() if any(d == 0 for d in s)]
  if empty:
    where, shape = empty[0]
    raise DataCheckError(
        f"{model_name} reduces the input {tuple(input_shape[1:3])} (height, width) to nothing: "
        f"its layer {where} outputs shape {tuple(shape)}. Give a larger image (a resize(...) or "
        "crop size in config.data.preprocess_*, or config.data.image_size), or pick a model "
        "with less downsampling.")


# ---------------------------------------------------------------------------
# Showing the report.
# ---------------------------------------------------------------------------
def format_report(report: dict[str, Any], found: Sequence[dict[str, str]]) -> str:
  """The report as text for the terminal."""
  lines = [f"Dataset report: {report['source']}",
           f"  classes: {len(report['classes'])}"
           + (f"; the model expects {report['expected_input']}x{report['expected_input']} inputs"
              if report.get("expected_input") else "")]
  for name, section in report["splits"].items():
    counts = section["class_counts"]
    lines.append(f"\nsplit {name!r}: {section['examples']} examples")
    width = max([len(c) for c in counts] + [5])
    for c, n in counts.items():
      bar = "#" * int(round(30 * n / max(max(counts.values()), 1)))
      lines.append(f"  {c:<{width}} {n:>7} {bar}")
    if section["imbalance_ratio"]:
      lines.append(f"  largest / smallest class: {section['imbalance_ratio']:.1f}x")
    h, w = section["sizes"]["height"], section["sizes"]["width"]
    if h["median"] is not None:
      lines.append(f"  height min/median/max {h['min']:g}/{h['median']:g}/{h['max']:g}, width "
                   f"{w['min']:g}/{w['median']:g}/{w['max']:g}")
      for key, title in (("min_side_histogram", "shorter side"),
                         ("aspect_ratio_histogram", "aspect ratio (w/h)")):
        hist = section["sizes"][key]
        cells = [f"[{_edge(a)}, {_edge(b)}): {n}" for a, b, n in
                 zip(hist["edges"], hist["edges"][1:], hist["counts"]) if n]
        lines.append(f"  {title}: " + ", ".join(cells))
      if "smaller_than_input" in section["sizes"]:
        lines.append(f"  smaller than the model's input: {section['sizes']['smaller_than_input']}")
    lines.append(f"  colour modes: {section['modes']}; flat images: {section['constant_images']}; "
                 f"unusable files: {len(section['problem_files'])}; skipped files: "
                 f"{len(section['skipped_files'])}; groups of identical files: "
                 f"{len(section['duplicate_groups'])}")
  cross = report.get("cross_split")
  if cross:
    lines.append(f"\n{cross['eval_split']!r} images also in {cross['train_split']!r}: "
                 f"{cross['eval_images_with_duplicates']} ({len(cross['exact'])} exact, "
                 f"{len(cross['near'])} near)")
  lines.append("")
  if not found:
    lines.append("No problem found.")
  for f in found:
    lines.append(f"{f['severity']}: [{f['code']}] {f['message']}")
  return "\n".join(lines)


def _edge(value: float) -> str:
  return "inf" if value >= 1e9 else f"{value:g}"


def render_grid(report: dict[str, Any], scans: dict[str, SplitScan], path: str,
                per_class: int = 8, max_classes: int = 20) -> None:
  """A PNG: up to `per_class` training thumbnails of each class (rows), then the
  evaluation images that have a copy in training, next to that copy."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  train = scans[report["train_split"]]
  classes = report["classes"][:max_classes]
  by_name = {im.name: im for scan in scans.values() for im in scan.images}
  rows = [(c, [im for im in train.images if im.label == i and im.thumb is not None][:per_class])
          for i, c in enumerate(classes)]
  cross = report.get("cross_split") or {}
  pairs = [(p["train"], p["eval"]) for p in cross.get("exact", []) + cross.get("near", [])]
  pairs = pairs[:per_class // 2]
  if pairs:
    rows.append(("train | eval copies", [by_name[n] for pair in pairs for n in pair]))
  fig, axes = plt.subplots(len(rows), per_class, figsize=(per_class * 0.9, len(rows) * 1.0),
                           squeeze=False)
  for r, (title, images) in enumerate(rows):
    for k in range(per_class):
      ax = axes[r][k]
      ax.axis("off")
      if k < len(images):
        ax.imshow(images[k].thumb, cmap="gray", vmin=0, vmax=255)
    axes[r][0].set_title(f"{title} ({report['splits'][train.name]['class_counts'].get(title, '')})"
                         if title in report["classes"] else title, fontsize=7, loc="left")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def inspect(name: str, train_split: str | None = None, eval_split: str | None = None,
            data_dir: str | None = None, expected_input: int | None = None,
            max_examples: int | None = None
            ) -> tuple[dict[str, Any], dict[str, SplitScan]]:
  """(report, scans) of a source named as config.data.name ('digits', 'folder:/path', tfds).

  A folder is read directly (not through `FolderSource`), so that a layout the
  training run would refuse is still reported.
  """
  if name.startswith("folder:"):
    root = os.path.abspath(os.path.expanduser(name[len("folder:"):]))
    if not os.path.isdir(root):
      raise DataCheckError(f"The image folder {root} does not exist.")
    train_split = train_split or "train"
    if eval_split is None:
      from vision_jax.data.folder import default_eval_split  # pylint: disable=import-outside-toplevel
      eval_split = default_eval_split(root)
    classes, scans = scan_folder(root, list(dict.fromkeys([train_split, eval_split])))
    source = f"folder:{root}"
  else:
    import ml_collections  # pylint: disable=import-outside-toplevel
    from vision_jax.data import get_dataset  # pylint: disable=import-outside-toplevel
    config = {"name": name}
    if name == "digits":
      config["image_size"] = 8  # the images as stored
    else:
      config.update(preprocess_train="decode", preprocess_eval="decode")
    for key, value in (("train_split", train_split), ("eval_split", eval_split),
                       ("data_dir", data_dir)):
      if value:
        config[key] = value
    dataset = get_dataset(ml_collections.ConfigDict(config))
    classes, scans, source = scan_dataset(dataset, max_examples)
    train_split = getattr(dataset, "train_split", "train")
    eval_split = getattr(dataset, "eval_split", "eval")
  report = build_report(classes, scans, source, train_split, eval_split, expected_input)
  return report, scans
