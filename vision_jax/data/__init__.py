"""Data: sources, preprocessing strings, batch augmentations, one iterator interface.

This module only selects a source; each lives in its own module.
`get_dataset(config.data)` returns an object with `num_train`, `num_classes`,
`train_iterator(global_batch, seed, start_step=0, process_index=0,
process_count=1)` (endless; batch s is a pure function of (seed, s)) and
`eval_iterator(global_batch, process_index=0, process_count=1)` (one ordered
pass, last batch padded, 'mask' marks real rows). Both yield this process's
numpy slice of each global batch: {'image': float32 NHWC, 'label': int32, or
float32 soft labels [N, classes] after onehot/mixup/cutmix}.

config.data.name selects the source:
  "digits"          the embedded handwritten digits (no TensorFlow involved);
  "synthetic"       random arrays, for benchmarks;
  "folder:/path"    root/<split>/<class>/*.{jpg,jpeg,png} (`folder.FolderSource`);
  anything else     a tensorflow-datasets builder, e.g. "cifar10", "imagenet2012"
                    (`tfds_source.TfdsSource`), read with tf.data (`pipeline`).
The tf.data sources take preprocess_train / preprocess_eval op strings
(`ops`), e.g. "decode|inception_crop(224)|flip_lr|value_range(-1,1)", and every
source takes config.data.mix ("mixup(0.2)", "cutmix(1.0)", ...; see `mix`).
config.data.balance ('none', 'sample', 'loss') handles class imbalance (`balance`).
Before training, `report.check_before_training` looks for degenerate data and
leakage between splits (`config.data.checks`); `tools/inspect_data.py` prints the
same dataset report. docs/data.md lists every field and op.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from vision_jax.data import balance as balance_lib
from vision_jax.data.arrays import ArrayDataset, synthetic_dataset
from vision_jax.data.digits import LOCAL_SCALE, digits_dataset
from vision_jax.data.errors import DataCheckError, DatasetError, PreprocessError
from vision_jax.data.eval_preprocess import eval_preprocess  # noqa: F401

DATASETS = ("digits", "synthetic", "folder:/path", "<tfds builder name>")
_TF_FIELDS = ("preprocess_train", "preprocess_eval", "shuffle_buffer", "cache", "data_dir",
              "num_parallel_calls", "prefetch_batches",
              "validate_files", "image_key", "label_key")

__all__ = ["ArrayDataset", "DataCheckError", "DatasetError", "PreprocessError", "digits_dataset",
           "get_dataset", "synthetic_dataset"]


def get_dataset(data_config: Any) -> Any:
  """Builds the dataset named by `data_config.name` (see the module docstring).

  Raises:
    DatasetError: unknown name, missing or unprepared data, bad fields.
    PreprocessError: a malformed preprocessing or mix string (a DatasetError).
  """
  name = data_config.get("name")
  balance = balance_lib.check_mode(data_config.get("balance"))
  if name in ("digits", "synthetic"):
    ignored = [f for f in _TF_FIELDS if data_config.get(f) is not None]
    if ignored:
      logging.warning("config.data.%s: not used by the %r source (it preprocesses in memory).",
                      "/".join(ignored), name)
  if name == "digits":
    dataset = digits_dataset(image_size=data_config.get("image_size", 32),
                             max_shift=data_config.get("max_shift", 0),
                             train_split=data_config.get("train_split", "train"),
                             eval_split=data_config.get("eval_split", "test"),
                             classes=data_config.get("classes", None),
                             train_per_class=data_config.get("train_per_class", None),
                             augment=data_config.get("augment", "shift"),
                             views=data_config.get("views", 1),
                             local_crops=data_config.get("local_crops", 0) or 0,
                             local_image_size=data_config.get("local_image_size", None),
                             local_scale=tuple(data_config.get("local_scale", None)
                                               or LOCAL_SCALE))
  elif name == "synthetic":
    dataset = synthetic_dataset(image_size=data_config.get("image_size", 224),
                                num_classes=data_config.get("num_classes", 1000),
                                num_train=data_config.get("num_train", 256),
                                num_eval=data_config.get("num_eval", 64))
  elif isinstance(name, str) and name.strip():
    from vision_jax.data.pipeline import tf_dataset  # pylint: disable=import-outside-toplevel
    dataset = tf_dataset(data_config, *_tf_source(data_config, name))
  else:
    raise DatasetError(f"Unknown dataset {name!r} in config.data.name. Available: {DATASETS}.")
  if isinstance(dataset, ArrayDataset):
    dataset.balance = balance
  mix = data_config.get("mix")
  if mix:
    from vision_jax.data import mix as mix_lib  # pylint: disable=import-outside-toplevel
    dataset = mix_lib.MixedDataset(dataset, mix_lib.get_batch_op(mix), mix)
  return dataset


def _tf_source(data_config: Any, name: str) -> tuple[Any, str, str]:
  """(source, train split, eval split) of a tf.data dataset: an image folder or a tfds builder."""
  # pylint: disable=import-outside-toplevel
  from vision_jax.config_base import DATA_DEFAULTS
  train_split = data_config.get("train_split") or "train"
  eval_split = data_config.get("eval_split")
  if name.startswith("folder:"):
    from vision_jax.data.folder import FolderSource, default_eval_split
    folder = name[len("folder:"):]
    if not folder:
      raise DatasetError("config.data.name='folder:' needs a path: 'folder:/path/to/root'.")
    eval_split = eval_split or default_eval_split(folder)
    source = FolderSource(folder, [train_split, eval_split],
                          data_config.get("validate_files") or DATA_DEFAULTS["validate_files"],
                          max_bad_fraction=data_config.get("max_bad_fraction"))
  else:
    from vision_jax.data.tfds_source import TfdsSource
    source = TfdsSource(name, data_dir=data_config.get("data_dir"),
                        image_key=data_config.get("image_key") or "image",
                        label_key=data_config.get("label_key") or "label")
    eval_split = eval_split or source.default_eval_split()
  return source, train_split, eval_split
