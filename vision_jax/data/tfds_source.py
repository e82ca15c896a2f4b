"""tensorflow-datasets builders as sources: `config.data.name = "cifar10"`, "imagenet2012", ...

Splits are tfds split strings ("train", "train[:90%]", "train[:1000]+validation").
Process p of P reads `tfds.even_splits(split, P)[p]`: disjoint shares that
together cover the split, sizes differing by at most one (per "+"-joined part). Images are read as
encoded bytes (`tfds.decode.SkipDecoding`) so that the preprocessing string
decides how to decode them (e.g. `inception_crop` decodes only the crop window
of a JPEG).

Nothing is downloaded: the data must have been prepared (`tfds build`). When it
has not, `TfdsSource` raises DatasetError saying where tfds looked and how to
prepare it, including the manual download of ImageNet.
"""

from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from vision_jax.data.errors import DatasetError
from vision_jax.data.source import Source

DEFAULT_EVAL_SPLITS = ("validation", "test")


class TfdsSource(Source):
  """A prepared tfds dataset.

  Attributes:
    builder: the tfds builder.
    name: the builder name.
    num_classes: classes of the label feature.
    image_key, label_key: the features read as "image" and "label".
  """

  def __init__(self, name: str, data_dir: str | None = None, image_key: str = "image",
               label_key: str = "label"):
    """Opens the builder; raises DatasetError if it is unknown or not prepared."""
    self.name = name
    self.image_key = image_key
    self.label_key = label_key
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as e:
      detail = "" if isinstance(e, tfds.core.registered.DatasetNotFoundError) else (
          f" ({str(e).splitlines()[0]})")
      raise DatasetError(
          f"Unknown dataset {name!r} in config.data.name{detail}. Use 'digits', 'synthetic', "
          "'folder:/path/to/images' or a tensorflow-datasets builder name (tfds.list_builders()); "
          "a version can follow the name ('cifar10:3.0.2').") from None
    info = self.builder.info
    if not info.splits:
      raise DatasetError(not_prepared_message(self.builder, data_dir))
    features = info.features
    for key in (image_key, label_key):
      if key not in features:
        raise DatasetError(f"The tfds dataset {name!r} has no feature {key!r}; its features are "
                           f"{sorted(features.keys())} (set config.data.image_key / label_key).")
    label = features[label_key]
    if not hasattr(label, "num_classes"):
      raise DatasetError(f"The feature {label_key!r} of {name!r} is not a class label.")
    self.num_classes = int(label.num_classes)
    self._decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                      if isinstance(f, tfds.features.Image)}

  def default_eval_split(self) -> str:
    for split in DEFAULT_EVAL_SPLITS:
      if split in self.builder.info.splits:
        return split
    return "test"

  def _split_info(self, split):
    try:
      return self.builder.info.splits[split]
    except (KeyError, ValueError, AssertionError) as e:
      raise DatasetError(f"The tfds dataset {self.name!r} has no split {str(split)!r} ({e}); its "
                         f"splits are {sorted(self.builder.info.splits.keys())}.") from None

  def num_examples(self, split: str) -> int:
    return int(self._split_info(split).num_examples)

  def process_split(self, split: str, process_index: int, process_count: int):
    self._split_info(split)
    return tfds.even_splits(split, process_count)[process_index]

  def share_sizes(self, split: str, process_count: int) -> list[int]:
    return [int(self._split_info(s).num_examples) for s in tfds.even_splits(split, process_count)]

  def read(self, split: str, process_index: int, process_count: int, *, training: bool,
           seed: int = 0) -> tf.data.Dataset:
    """Raw examples of this process's share; files in a seeded order if training, else in order."""
    read_config = tfds.ReadConfig(
        shuffle_seed=int(seed) & 0x7FFFFFFF, shuffle_reshuffle_each_iteration=False,
        try_autocache=False, add_tfds_id=False)
    try:
      ds = self.builder.as_dataset(
          split=self.process_split(split, process_index, process_count), shuffle_files=training,
          decoders=self._decoders or None, read_config=read_config)
    except AssertionError as e:  # tfds asserts when the files are missing
      raise DatasetError(f"{not_prepared_message(self.builder, None)} ({e})") from None
    image_key, label_key = self.image_key, self.label_key
    return ds.map(lambda ex: {**{k: v for k, v in ex.items() if k not in (image_key, label_key)},
                              "image": ex[image_key], "label": ex[label_key]})

  def explain_failure(self, split: str, error: Exception) -> str:
    return (f"Reading split {split!r} of the tfds dataset {self.name!r} from "
            f"{self.builder.data_dir} failed: {error}. The prepared files may be incomplete: "
            f"rebuild with `tfds build {self.name} --data_dir=...`; or check the preprocessing "
            "strings.")


def not_prepared_message(builder, data_dir: str | None) -> str:
  """Where tfds looked, and the commands that prepare the data (manual download included)."""
  name = builder.info.full_name
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  lines = [
      f"The tfds dataset {name!r} is not prepared: tfds looked in {builder.data_dir} "
      f"(config.data.data_dir={data_dir!r}; without it tfds uses $TFDS_DATA_DIR or "
      "~/tensorflow_datasets). Nothing is downloaded at training time."]
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if manual:
    manual_dir = os.path.join(root, "downloads", "manual")
    lines.append(
        f"{builder.name} needs a manual download:\n  " + " ".join(manual.split()) +
        f"\nPut those files in {manual_dir} (or pass --manual_dir), then run once:\n"
        f"  tfds build {builder.name} --data_dir={root} --manual_dir={manual_dir}")
  else:
    lines.append(f"Prepare it once, on a machine with internet access:\n"
                 f"  tfds build {builder.name} --data_dir={root}\n"
                 f"then copy {root} here or point config.data.data_dir at it.")
  return "\n".join(lines)
