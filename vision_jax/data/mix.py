"""Batch-level augmentations: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019).

Chosen by config.data.mix, an op string of one batch op, for any source:
  "mixup(0.2)", "cutmix(1.0)", "mixup_or_cutmix(0.8, 1.0)" (timm's default mix
  for DeiT-style recipes: one of the two per batch, each with probability 1/2).

Where: per host, on this process's local batch, in the input iterator (the train
step is unchanged). Each example is mixed with its mirror in the local batch
(row i with row n-1-i). The mixing coefficient (and the CutMix box) is drawn
once per step from (seed, step), so it is the same on every process, and batch
s stays a pure function of (seed, s): resume is exact. With several processes
the partners are found within each process's slice, so the batches differ from
a single-process run with the same global batch.

Labels become soft: float32 [batch, num_classes] = lam * onehot(y) +
(1 - lam) * onehot(y_partner), where lam is the mixup coefficient, or for CutMix
the fraction of the image that remains the example's own. Every training batch
gets soft labels (also when a batch is not mixed, with `prob` < 1), so the
train step always sees the same shapes. Evaluation is not mixed.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator

import numpy as np

from vision_jax.data.errors import PreprocessError

Batch = dict[str, np.ndarray]
# (batch, rng, num_classes) -> batch
BatchOp = Callable[[Batch, np.random.Generator, int], Batch]
_MIX_SALT = 0x6D6978  # keeps the mixing draws apart from the example order draws


def soft_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Integer labels -> one-hot float32; soft labels pass through."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    return labels.astype(np.float32)
  return np.eye(num_classes, dtype=np.float32)[labels]


def _check_alpha(alpha: float, name: str = "alpha") -> float:
  if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
    raise ValueError(f"{name} must be a positive number, not {alpha!r}.")
  return float(alpha)


def _check_images(batch: Batch) -> np.ndarray:
  images = batch["image"]
  if images.ndim != 4:
    raise ValueError(f"mixup/cutmix need images [batch, H, W, C], got shape {images.shape}.")
  return images


def _mix_labels(batch: Batch, lam: float, num_classes: int) -> np.ndarray:
  labels = soft_labels(batch["label"], num_classes)
  return (lam * labels + (1.0 - lam) * labels[::-1]).astype(np.float32)


def apply_mixup(batch: Batch, lam: float, num_classes: int) -> Batch:
  images = _check_images(batch).astype(np.float32)
  mixed = lam * images + (1.0 - lam) * images[::-1]
  return {**batch, "image": mixed.astype(np.float32), "label": _mix_labels(batch, lam, num_classes)}


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of a box of area about (1 - lam), centred uniformly, clipped."""
  cut = np.sqrt(1.0 - lam)
  box_h, box_w = int(height * cut), int(width * cut)
  cy, cx = int(rng.integers(height)), int(rng.integers(width))
  top, bottom = np.clip([cy - box_h // 2, cy + box_h // 2], 0, height)
  left, right = np.clip([cx - box_w // 2, cx + box_w // 2], 0, width)
  return int(top), int(bottom), int(left), int(right)


def apply_cutmix(batch: Batch, lam: float, rng: np.random.Generator, num_classes: int) -> Batch:
  images = _check_images(batch)
  height, width = images.shape[1:3]
  top, bottom, left, right = cutmix_box(height, width, lam, rng)
  mixed = np.array(images, np.float32, copy=True)
  mixed[:, top:bottom, left:right] = images[::-1, top:bottom, left:right]
  kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
  return {**batch, "image": mixed, "label": _mix_labels(batch, kept, num_classes)}


def _unmixed(batch: Batch, num_classes: int) -> Batch:
  return {**batch, "label": soft_labels(batch["label"], num_classes)}


def mixup(alpha: float, prob: float = 1.0) -> BatchOp:
  """Mixup with lam ~ Beta(alpha, alpha), applied to a batch with probability `prob`."""
  alpha = _check_alpha(alpha)

  def op(batch, rng, num_classes):
    if rng.random() >= prob:
      return _unmixed(batch, num_classes)
    return apply_mixup(batch, float(rng.beta(alpha, alpha)), num_classes)

  return op


def cutmix(alpha: float, prob: float = 1.0) -> BatchOp:
  """CutMix with lam ~ Beta(alpha, alpha), applied to a batch with probability `prob`."""
  alpha = _check_alpha(alpha)

  def op(batch, rng, num_classes):
    if rng.random() >= prob:
      return _unmixed(batch, num_classes)
    return apply_cutmix(batch, float(rng.beta(alpha, alpha)), rng, num_classes)

  return op


def mixup_or_cutmix(mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                    prob: float = 1.0) -> BatchOp:
  """Per batch: CutMix with probability `switch_prob`, else mixup; a batch is mixed w.p. `prob`."""
  mixup_alpha = _check_alpha(mixup_alpha, "mixup_alpha")
  cutmix_alpha = _check_alpha(cutmix_alpha, "cutmix_alpha")

  def op(batch, rng, num_classes):
    if rng.random() >= prob:
      return _unmixed(batch, num_classes)
    if rng.random() < switch_prob:
      return apply_cutmix(batch, float(rng.beta(cutmix_alpha, cutmix_alpha)), rng, num_classes)
    return apply_mixup(batch, float(rng.beta(mixup_alpha, mixup_alpha)), num_classes)

  return op


BATCH_OPS: dict[str, Callable[..., BatchOp]] = {
    "mixup": mixup, "cutmix": cutmix, "mixup_or_cutmix": mixup_or_cutmix}


def get_batch_op(spec: str) -> BatchOp:
  """Parses config.data.mix (one batch op, in the op-string syntax)."""
  from vision_jax.data.opstring import parse  # pylint: disable=import-outside-toplevel
  calls = parse(spec)
  if len(calls) != 1:
    raise PreprocessError(f"config.data.mix={spec!r} must name exactly one of "
                          f"{sorted(BATCH_OPS)}.")
  call = calls[0]
  if call.name not in BATCH_OPS:
    raise PreprocessError(f"Unknown batch op {call.name!r} in config.data.mix={spec!r}. "
                          f"Batch ops: {', '.join(sorted(BATCH_OPS))}.")
  factory = BATCH_OPS[call.name]
  try:
    inspect.signature(factory).bind(*call.args, **dict(call.kwargs))
    return factory(*call.args, **dict(call.kwargs))
  except (TypeError, ValueError) as e:
    raise PreprocessError(f"Bad arguments in {call.text!r}: {e} Usage: "
                          f"{call.name}{inspect.signature(factory)}.") from None


class MixedDataset:
  """Wraps a dataset: training batches go through a batch op; evaluation is unchanged."""

  def __init__(self, dataset: Any, batch_op: BatchOp, spec: str = ""):
    self.dataset = dataset
    self.batch_op = batch_op
    self.spec = spec

  def __getattr__(self, name: str) -> Any:
    return getattr(self.dataset, name)

  def train_iterator(self, global_batch: int, seed: int, start_step: int = 0,
                     process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """The wrapped batches from `start_step` on, mixed with draws seeded by (seed, step)."""
    batches = self.dataset.train_iterator(global_batch, seed, start_step, process_index,
                                          process_count)
    for step, batch in enumerate(batches, start=start_step):
      rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, step, _MIX_SALT])
      yield self.batch_op(batch, rng, self.dataset.num_classes)

  def eval_iterator(self, global_batch: int, process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    return self.dataset.eval_iterator(global_batch, process_index, process_count)
