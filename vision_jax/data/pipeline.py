"""tf.data pipelines over a source (tensorflow-datasets or an image folder).

`TfDataset` gives the trainer the same interface as the in-memory datasets:
`train_iterator(...)` and `eval_iterator(...)` yield this process's numpy slice
of each global batch.

Training stream of process p of P, for a run seed and a global batch B:
  * p reads its own share of the split (disjoint; sizes differ by at most one,
    per "+"-joined part of a tfds split string);
    every process takes the same number of steps per epoch,
    S = min(share sizes) // (B / P); the rest of each epoch is dropped.
  * Epoch e is the share shuffled with a seed that is a function of
    (run seed, p, e) only, cut to S * B / P examples. Example k of epoch e is
    augmented with a seed that is a function of (run seed, p, e, k) only.
  * Batch s is therefore a pure function of (seed, s): starting at step s skips
    (s mod S) * B / P examples of epoch s // S (before any decoding) and yields
    exactly what an uninterrupted run yields from s on.
  * Epochs follow each other inside one tf.data graph (no restart at the epoch
    boundary); decoding and augmentation run in parallel, in a deterministic
    order, and batches are prefetched on the host. The trainer's Prefetcher then
    puts them on the devices ahead of the step.

Host parallelism (config.data): `num_parallel_calls` examples are decoded and
augmented at once and `prefetch_batches` batches are kept ready. Unset, both are
tf.data.AUTOTUNE, which sizes them to the host's cores and to the consumer's pace,
so a host with many cores uses them all. Set them to cap the input pipeline
(several jobs on one host, or cores the train step needs). They change speed only:
the batches are the same whatever their values.

Evaluation: each process reads its share in order; the last batch is padded
with zeros and 'mask' False, and processes with a shorter share add padding
batches, so all processes yield ceil(max share / (B / P)) batches and every
example is counted exactly once.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from vision_jax.data import ops as ops_lib
from vision_jax.data.errors import DataCheckError, DatasetError
from vision_jax.data.source import Source, share_bounds  # noqa: F401  (re-exported)

Batch = dict[str, np.ndarray]
AUTOTUNE = tf.data.AUTOTUNE


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"The global batch size {global_batch} does not divide across "
                     f"{process_count} processes.")
  return global_batch // process_count


def stream_seed(seed: int, *salt: int) -> tf.Tensor:
  """A shape [2] int64 stateless seed that depends only on (seed, *salt)."""
  words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *salt]).generate_state(4)
  return tf.constant([int(words[0]) << 31 | int(words[1]) >> 1,
                      int(words[2]) << 31 | int(words[3]) >> 1], tf.int64)


class TfDataset:
  """A source plus preprocessing strings, with the trainer's iterator interface.

  Attributes:
    source: where examples come from.
    train_split, eval_split: split names of the source.
    preprocess_train, preprocess_eval: the parsed op strings.
    shuffle_buffer: config.data.shuffle_buffer (None: the source's default).
    cache: keep this process's raw share in memory after the first epoch.
    num_parallel_calls: examples preprocessed at once (AUTOTUNE: tf.data picks).
    prefetch_batches: batches kept ready on the host (AUTOTUNE: tf.data picks).
    balance: config.data.balance; 'sample' draws each epoch's training examples
      with replacement, with probabilities 1 / (class count) (`balance.py`).
  """

  def __init__(self, source: Source, train_split: str, eval_split: str, preprocess_train: str,
               preprocess_eval: str, shuffle_buffer: int | None = None, cache: bool = False,
               num_parallel_calls: int | None = None, prefetch_batches: int | None = None,
               balance: str = "none"):
    self.source = source
    self.balance = balance
    if balance == "sample" and not hasattr(source, "share"):
      raise DataCheckError(
          f"config.data.balance='sample' needs every label before training, which {source.name} "
          "(a tfds dataset) does not give without a full pass over its records; use "
          "config.data.balance='loss' (class-weighted loss) instead.")
    self.train_split = train_split
    self.eval_split = eval_split
    self.preprocess_train = ops_lib.get_preprocess_fn(preprocess_train)
    self.preprocess_eval = ops_lib.get_preprocess_fn(preprocess_eval)
    self.shuffle_buffer = shuffle_buffer
    self.cache = cache
    self.num_parallel_calls = _parallelism("num_parallel_calls", num_parallel_calls)
    self.prefetch_batches = _parallelism("prefetch_batches", prefetch_batches)
    self.num_classes = source.num_classes

  @property
  def num_train(self) -> int:
    return self.source.num_examples(self.train_split)

  @property
  def views(self) -> int:
    """Augmented views per training example: 2 when preprocess_train holds `two_views`."""
    return self.preprocess_train.views

  @property
  def local_views(self) -> int:
    """DINO local crops per training example: n when preprocess_train holds `local_crops(n)`."""
    return self.preprocess_train.local_views

  @property
  def num_eval(self) -> int:
    return self.source.num_examples(self.eval_split)

  # -------------------------------------------------------------------------
  # Training.
  # -------------------------------------------------------------------------
  def train_dataset(self, global_batch: int, seed: int, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """The endless tf.data stream of this process's training batches from `start_step` on."""
    local = local_batch_size(global_batch, process_count)
    sizes = self.source.share_sizes(self.train_split, process_count)
    steps_per_epoch = min(sizes) // local
    if steps_per_epoch == 0:
      raise DatasetError(
          f"The batch size {global_batch} is larger than the training split {self.train_split!r} "
          f"of {self.source.name} ({sum(sizes)} examples over {process_count} processes).")
    per_epoch = steps_per_epoch * local
    start_epoch, offset = divmod(int(start_step), steps_per_epoch)
    share = sizes[process_index]
    buffer = self.source.shuffle_buffer(share, self.shuffle_buffer)
    base = self.source.read(self.train_split, process_index, process_count, training=True,
                            seed=seed)
    if self.cache:
      base = base.cache()
    order_seed = stream_seed(seed, process_index, 1)
    augment_seed = stream_seed(seed, process_index, 2)
    preprocess = self.preprocess_train
    source = self.source

    def epoch_examples(epoch):
      shuffle_seed = tf.random.stateless_uniform(
          [], tf.random.experimental.stateless_fold_in(order_seed, epoch), minval=None,
          maxval=None, dtype=tf.int64)
      ds = base.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
      ds = ds.take(per_epoch).enumerate()
      ds = ds.skip(tf.where(epoch == start_epoch, tf.constant(offset * local, tf.int64), 0))
      return ds.map(lambda index, example: (epoch, index, example))

    def process(epoch, index, example):
      example_seed = tf.random.experimental.stateless_fold_in(
          tf.random.experimental.stateless_fold_in(augment_seed, epoch), index)
      return preprocess(source.load(example), example_seed)

    if self.balance == "sample":
      epoch_examples = self._balanced_epochs(process_index, process_count, per_epoch,  # noqa: F811
                                             order_seed, start_epoch, offset * local)
    ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch_examples)
    ds = ds.map(process, num_parallel_calls=self.num_parallel_calls, deterministic=True)
    _check_outputs(ds, "preprocess_train", self.preprocess_train.spec)
    ds = ds.batch(local, drop_remainder=True, num_parallel_calls=self.num_parallel_calls,
                  deterministic=True)
    ds = ds.map(_finalize)
    return ds.with_options(_options()).prefetch(self.prefetch_batches)

  def _balanced_epochs(self, process_index: int, process_count: int, per_epoch: int,
                       order_seed: tf.Tensor, start_epoch: int, skip: int):
    """epoch -> its examples under balance='sample': `per_epoch` draws with replacement from
    this process's share, example i with probability 1 / (C * n_{label_i}) (share counts),
    by inverse CDF on stateless uniforms seeded by (seed, process, epoch)."""
    from vision_jax.data.balance import sampling_weights  # pylint: disable=import-outside-toplevel
    paths, labels = self.source.share(self.train_split, process_index, process_count, True)
    cdf = np.cumsum(sampling_weights(labels, self.num_classes))
    cdf = tf.constant(cdf / cdf[-1], tf.float64)
    files, label_values = tf.constant(paths, tf.string), tf.constant(labels, tf.int64)
    last = len(paths) - 1

    def epoch_examples(epoch):
      draws = tf.random.stateless_uniform(
          [per_epoch], tf.random.experimental.stateless_fold_in(order_seed, epoch),
          dtype=tf.float64)
      index = tf.minimum(tf.searchsorted(cdf, draws, side="right"), last)
      ds = tf.data.Dataset.from_tensor_slices(
          {"file_name": tf.gather(files, index), "label": tf.gather(label_values, index)})
      ds = ds.enumerate().skip(tf.where(epoch == start_epoch, tf.constant(skip, tf.int64), 0))
      return ds.map(lambda i, example: (epoch, i, example))

    return epoch_examples

  def train_iterator(self, global_batch: int, seed: int, start_step: int = 0,
                     process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """Endless training batches from `start_step` on; this process's slice of each.

    When reading fails because files became unreadable, the source leaves them out
    (`Source.exclude_unreadable`) and the stream is rebuilt from the next step.
    """
    step = int(start_step)
    while True:
      ds = self.train_dataset(global_batch, seed, step, process_index, process_count)
      try:
        for batch in self._numpy(ds, self.train_split, rebuild=True):
          yield batch
          step += 1
      except _Rebuild:
        continue  # rebuilt without them, from the step that was not yielded yet
      return

  # -------------------------------------------------------------------------
  # Evaluation.
  # -------------------------------------------------------------------------
  def eval_iterator(self, global_batch: int, process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    """One ordered pass over the eval split; the last batch is padded, 'mask' marks real rows."""
    local = local_batch_size(global_batch, process_count)
    # A pass cannot restart half-way without counting examples twice: recheck the files first.
    self.source.exclude_unreadable(self.eval_split)
    sizes = self.source.share_sizes(self.eval_split, process_count)
    num_batches = math.ceil(max(sizes) / local)
    base = self.source.read(self.eval_split, process_index, process_count, training=False)
    preprocess, source = self.preprocess_eval, self.source
    ds = base.map(lambda example: preprocess(source.load(example)),
                  num_parallel_calls=self.num_parallel_calls, deterministic=True)
    _check_outputs(ds, "preprocess_eval", self.preprocess_eval.spec)
    ds = ds.batch(local, num_parallel_calls=self.num_parallel_calls,
                  deterministic=True).map(_finalize)
    if not ds.element_spec["label"].dtype.is_integer:
      raise DatasetError(f"config.data.preprocess_eval={self.preprocess_eval.spec!r} makes "
                         "non-integer labels; evaluation needs integer class labels (remove "
                         "onehot from the eval string).")
    ds = ds.with_options(_options()).prefetch(self.prefetch_batches)
    return self._padded(ds, local, num_batches)

  def _padded(self, ds: tf.data.Dataset, local: int, num_batches: int) -> Iterator[Batch]:
    template = None
    count = 0
    for batch in self._numpy(ds, self.eval_split):
      n = len(batch["label"])
      template = batch
      mask = np.arange(local) < n
      if n < local:
        batch = {k: _pad_rows(v, local) for k, v in batch.items()}
      batch["mask"] = mask
      count += 1
      yield batch
    if count < num_batches and template is None:
      spec = ds.element_spec
      if not all(s.shape[1:].is_fully_defined() for s in spec.values()):
        raise DatasetError("preprocess_eval must produce fixed-size images (e.g. end with "
                           "resize(...) or central_crop(...)).")
      template = {k: np.zeros((0,) + tuple(s.shape[1:]), s.dtype.as_numpy_dtype)
                  for k, s in spec.items()}
    for _ in range(count, num_batches):
      batch = {k: _pad_rows(v[:0], local) for k, v in template.items()}
      batch["mask"] = np.zeros(local, bool)
      yield batch

  def _numpy(self, ds: tf.data.Dataset, split: str, rebuild: bool = False) -> Iterator[Batch]:
    """The batches of `ds` (read from `split`) as numpy; a failed read raises a DatasetError.

    With `rebuild`, a read that failed on files which became unreadable leaves them out
    of the source (`Source.exclude_unreadable`) and raises `_Rebuild` instead, for the
    caller to make the stream again.
    """
    iterator = iter(ds.as_numpy_iterator())
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        if rebuild and self.source.exclude_unreadable(split):
          raise _Rebuild from None
        raise DatasetError(self.source.explain_failure(split, e)) from None
      yield batch


class _Rebuild(Exception):
  """Raised by `TfDataset._numpy`: unreadable files were left out, rebuild the stream."""


def _parallelism(field: str, value: int | None) -> int:
  """config.data.<field> as tf.data takes it: None (or AUTOTUNE) is AUTOTUNE, else >= 1."""
  if value is None or value == AUTOTUNE:
    return AUTOTUNE
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise DatasetError(f"config.data.{field}={value!r}: must be a positive integer, or unset "
                       "for tf.data.AUTOTUNE (sized to the host's cores).")
  return int(value)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows,) + array.shape[1:], array.dtype)
  out[:len(array)] = array
  return out


def _finalize(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """The trainer's dtypes: float32 images, int32 labels (float32 if one-hot or soft)."""
  out = dict(batch)
  if "image" in out and out["image"].dtype != tf.float32:
    out["image"] = tf.cast(out["image"], tf.float32)
  if "label" in out:
    label = out["label"]
    out["label"] = tf.cast(label, tf.int32 if label.dtype.is_integer else tf.float32)
  return out


def _check_outputs(ds: tf.data.Dataset, field: str, spec: str) -> None:
  outputs = ds.element_spec
  missing = [k for k in ("image", "label") if k not in outputs]
  if missing:
    raise DatasetError(f"config.data.{field}={spec!r} leaves no {missing}; it makes "
                       f"{sorted(outputs)}.")
  for key, value in outputs.items():
    if value.dtype == tf.string:
      raise DatasetError(f"config.data.{field}={spec!r} leaves the string feature {key!r}; "
                         "decode images (decode, or a crop op) and keep only numeric features.")


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  # Parallelism comes from parallel map calls; one thread per op avoids oversubscribing
  # the cores that the train step also needs.
  options.threading.max_intra_op_parallelism = 1
  return options


def tf_dataset(data_config: Any, source: Source, train_split: str, eval_split: str) -> TfDataset:
  """`TfDataset` over `source` with the preprocessing and host knobs of config.data.

  `vision_jax.data.get_dataset` builds the source (an image folder or a tfds
  builder) and hands it here, so the pipeline knows only the `Source` interface.
  """
  specs = {}
  for field in ("preprocess_train", "preprocess_eval"):
    specs[field] = data_config.get(field)
    if not specs[field]:
      raise DatasetError(
          f"config.data.{field} is required for {source.name}: an op string such as "
          "'decode|inception_crop(224)|flip_lr|value_range(-1,1)' (train) or "
          "'decode|resize_small(256)|central_crop(224)|value_range(-1,1)' (eval).")
  return TfDataset(source, train_split, eval_split, specs["preprocess_train"],
                   specs["preprocess_eval"], shuffle_buffer=data_config.get("shuffle_buffer"),
                   cache=bool(data_config.get("cache", False)),
                   num_parallel_calls=data_config.get("num_parallel_calls"),
                   prefetch_batches=data_config.get("prefetch_batches"),
                   balance=data_config.get("balance") or "none")
