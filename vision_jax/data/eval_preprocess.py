"""The evaluation preprocessing that a set of pretrained weights expects, as an op string.

Pretrained weights lose accuracy when evaluated under another resize, crop or
normalisation than they were trained with. `tools/convert_weights.py` records
the checkpoint's own settings in model.json under "preprocess" (timm's
`pretrained_cfg` keys), and `eval_preprocess` turns them into the op string the
data pipeline and the tools run. Plain Python: importing it loads no TensorFlow.
"""

from __future__ import annotations

from typing import Any, Mapping

from vision_jax.data.errors import PreprocessError

# timm interpolation names -> tf.image.resize methods.
_INTERPOLATIONS = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest",
                   "area": "area"}
DEFAULT_CROP_PCT = 0.875  # timm's default when crop_pct is None


def eval_preprocess(preprocess: Mapping[str, Any]) -> str:
  """Op string for the eval transform described by timm-style metadata.

  Args:
    preprocess: a mapping with timm's `pretrained_cfg` keys, taken as they are:
      input_size: int side, or timm's (channels, height, width) with height == width;
      crop_pct: fraction of the resized image kept by the centre crop (default 0.875);
      crop_mode: 'center' (default) or 'squash';
      interpolation: 'bicubic' (default), 'bilinear', 'nearest' or 'area';
      mean, std: per-channel normalisation of values in [0, 1] (default: none).
      Other keys (url, num_classes, ...) are ignored.

  Returns:
    e.g. "decode|timm_resize_crop(224, crop_pct=0.95, crop_mode='center',
    method='bicubic')|value_range(0, 1)|normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))".
    The geometry matches timm's `create_transform(**resolve_data_config(...))` in
    output size and crop offset (see ops/timm_resize.py).

  Raises:
    PreprocessError: a missing input_size, a non-square input, an unknown
      interpolation or crop mode.
  """
  size = preprocess.get("input_size", preprocess.get("image_size"))
  if size is None:
    raise PreprocessError("eval_preprocess: the metadata has no input_size.")
  if isinstance(size, (tuple, list)):
    dims = [int(s) for s in size]
    height, width = dims[-2], dims[-1]
    if height != width:
      raise PreprocessError(f"eval_preprocess: input_size {tuple(dims)} is not square; only "
                            "square inputs are supported.")
    size = height
  size = int(size)
  crop_pct = preprocess.get("crop_pct") or DEFAULT_CROP_PCT
  crop_mode = preprocess.get("crop_mode") or "center"
  if crop_mode not in ("center", "squash"):
    raise PreprocessError(f"eval_preprocess: crop_mode {crop_mode!r} is not supported; use "
                          "'center' or 'squash'.")
  interpolation = preprocess.get("interpolation") or "bicubic"
  if interpolation not in _INTERPOLATIONS:
    raise PreprocessError(f"eval_preprocess: interpolation {interpolation!r} is not one of "
                          f"{sorted(_INTERPOLATIONS)}.")
  ops = [
      "decode",
      f"timm_resize_crop({size}, crop_pct={float(crop_pct)!r}, crop_mode={crop_mode!r}, "
      f"method={_INTERPOLATIONS[interpolation]!r})",
      "value_range(0, 1)",
  ]
  mean, std = preprocess.get("mean"), preprocess.get("std")
  if mean is not None and std is not None:
    ops.append(f"normalize({tuple(float(m) for m in mean)!r}, {tuple(float(s) for s in std)!r})")
  return "|".join(ops)
