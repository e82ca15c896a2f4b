"""Preprocessing ops: each eagerly and inside tf.data with the same result; seeds; the string parser."""

import numpy as np
import pytest
import tensorflow as tf

from vision_jax.data import DatasetError, PreprocessError, ops
from vision_jax.data.ops import autoaugment as aa

RNG = np.random.default_rng(0)
# A smooth colour image (JPEG-friendly) with some noise, 40x48.
_Y, _X = np.mgrid[0:40, 0:48]
IMAGE = np.clip(np.stack([_Y * 6, _X * 5, 255 - _Y * 3 - _X * 2], -1) + RNG.integers(0, 30, (40, 48, 3)),
                0, 255).astype(np.uint8)
JPEG = tf.io.encode_jpeg(IMAGE, quality=95).numpy()
PNG = tf.io.encode_png(IMAGE).numpy()
GREY_PNG = tf.io.encode_png(IMAGE[..., :1]).numpy()
SEED = tf.constant([3, 11], tf.int64)

# op string -> (input, expected shape, expected dtype, (min, max) allowed range).
CASES = {
    "decode": (PNG, (40, 48, 3), tf.uint8, (0, 255)),
    "decode(1)": (GREY_PNG, (40, 48, 1), tf.uint8, (0, 255)),
    "resize(16)": (IMAGE, (16, 16, 3), tf.uint8, (0, 255)),
    "resize_small(20)": (IMAGE, (20, 24, 3), tf.uint8, (0, 255)),
    "central_crop(32)": (JPEG, (32, 32, 3), tf.uint8, (0, 255)),
    "timm_resize_crop(32, 0.875)": (JPEG, (32, 32, 3), tf.uint8, (0, 255)),
    "random_crop((24, 20))": (JPEG, (24, 20, 3), tf.uint8, (0, 255)),
    "inception_crop(32)": (JPEG, (32, 32, 3), tf.uint8, (0, 255)),
    "flip_lr": (IMAGE, (40, 48, 3), tf.uint8, (0, 255)),
    "pad(2)": (IMAGE, (44, 52, 3), tf.uint8, (0, 255)),
    "value_range(-1, 1)": (IMAGE, (40, 48, 3), tf.float32, (-1, 1)),
    "normalize((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))": (IMAGE, (40, 48, 3), tf.float32, (-1, 1)),
    "onehot(10)": (IMAGE, (40, 48, 3), tf.uint8, (0, 255)),
    "keep('image', 'label')": (IMAGE, (40, 48, 3), tf.uint8, (0, 255)),
    "randaugment(2, 10)": (IMAGE, (40, 48, 3), tf.uint8, (0, 255)),
    "autoaugment": (IMAGE, (40, 48, 3), tf.uint8, (0, 255)),
    "color_jitter(1.0, prob=1.0)": (IMAGE, (40, 48, 3), tf.float32, (0, 255)),
    "random_grayscale(1.0)": (IMAGE, (40, 48, 3), tf.float32, (0, 255)),
    "gaussian_blur(1.0)": (IMAGE, (40, 48, 3), tf.float32, (0, 255)),
    "solarize(1.0)": (IMAGE, (40, 48, 3), tf.float32, (0, 255)),
    "two_views|random_crop(24)|flip_lr": (IMAGE, (2, 24, 24, 3), tf.uint8, (0, 255)),
    # DINO's multi-crop: "local" [3, 12, 12, 3] float32 from the image before two_views.
    "two_views|random_crop(24)|local_crops(3)|random_crop(12)|flip_lr":
        (IMAGE, (2, 24, 24, 3), tf.uint8, (0, 255)),
}


def run_both(spec, image, seed=SEED, label=3):
  """The op string applied eagerly and inside tf.data.Dataset.map."""
  fn = ops.get_preprocess_fn(spec)
  example = {"image": tf.constant(image), "label": tf.constant(label, tf.int64)}
  eager = {k: v.numpy() for k, v in fn(example, seed).items()}
  ds = tf.data.Dataset.from_tensors(example).map(lambda ex: fn(ex, seed))
  graph = next(ds.as_numpy_iterator())
  return eager, graph


def test_every_registered_op_is_covered():
  names = {ops.parse(spec)[i].name for spec in CASES for i in range(len(ops.parse(spec)))}
  assert names == set(ops.registered_ops())


@pytest.mark.parametrize("spec", list(CASES))
def test_op_eager_equals_tf_data(spec):
  image, shape, dtype, (lo, hi) = CASES[spec]
  eager, graph = run_both(spec, image)
  assert sorted(eager) == ["image", "label"] + (["local"] if "local_crops" in spec else [])
  for key in eager:
    np.testing.assert_array_equal(eager[key], graph[key], err_msg=f"{spec}: {key}")
  out = eager["image"]
  assert out.shape == shape and out.dtype == dtype.as_numpy_dtype, (spec, out.shape, out.dtype)
  assert lo <= out.min() and out.max() <= hi, (spec, out.min(), out.max())
  if spec == "onehot(10)":
    assert eager["label"].dtype == np.float32 and eager["label"].tolist() == [0, 0, 0, 1] + [0] * 6


RANDOM_SPECS = ["random_crop(24)", "inception_crop(24)", "flip_lr", "randaugment(2, 10)",
                "autoaugment", "color_jitter(1.0)", "random_grayscale(0.5)", "gaussian_blur(0.5)",
                "solarize(0.5)", "two_views|random_crop(24)",
                "two_views|random_crop(24)|local_crops(2)|random_crop(12)"]


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_random_ops_follow_the_seed(spec):
  fn = ops.get_preprocess_fn(spec)
  example = {"image": tf.constant(IMAGE), "label": tf.constant(0, tf.int64)}
  outs = [fn(example, tf.constant([s, 5], tf.int64))["image"].numpy() for s in range(8)]
  again = fn(example, tf.constant([0, 5], tf.int64))["image"].numpy()
  np.testing.assert_array_equal(outs[0], again)
  distinct = {o.tobytes() for o in outs}
  assert len(distinct) >= 2, f"{spec}: 8 seeds gave one output"
  if spec.startswith("two_views"):
    assert not np.array_equal(outs[0][0], outs[0][1]) or not np.array_equal(outs[1][0], outs[1][1])


def test_local_crops_start_from_the_image_before_two_views():
  spec = "two_views|random_crop(24)|local_crops(3)|random_crop(12)|flip_lr"
  eager, graph = run_both(spec, IMAGE)
  np.testing.assert_array_equal(eager["local"], graph["local"])
  local = eager["local"]
  assert local.shape == (3, 12, 12, 3) and local.dtype == np.float32
  # Each local crop is a 12x12 window of the original 40x48 image (maybe mirrored), not of a
  # 24x24 global view, and the three are drawn independently.
  windows = {IMAGE[y:y + 12, x:x + 12].tobytes() for y in range(29) for x in range(37)}
  for crop in local.astype(np.uint8):
    assert crop.tobytes() in windows or crop[:, ::-1].tobytes() in windows
  assert len({c.tobytes() for c in local}) == 3
  # Adding local crops leaves the global views as they were: the seeds are kept apart.
  plain = run_both("two_views|random_crop(24)", IMAGE)[0]["image"]
  np.testing.assert_array_equal(eager["image"], plain)
  fn = ops.get_preprocess_fn(spec)
  assert (fn.views, fn.local_views) == (2, 3)
  assert ops.get_preprocess_fn("two_views|flip_lr").local_views == 0


def test_fused_decode_and_crop_matches_decode_then_crop():
  for spec in ["inception_crop(32)", "random_crop(24)", "central_crop(30)"]:
    fused = run_both(spec, JPEG)[0]["image"]
    unfused = run_both("decode|" + spec, JPEG)[0]["image"]
    # Same window; libjpeg's chroma upsampling differs slightly at the crop's edges.
    diff = np.abs(fused.astype(int) - unfused.astype(int))
    assert fused.shape == unfused.shape and diff.mean() < 0.5 and diff.max() <= 16, spec


def test_png_and_greyscale_are_decoded_to_three_channels():
  for data in (PNG, GREY_PNG):
    out = run_both("inception_crop(16)", data)[0]["image"]
    assert out.shape == (16, 16, 3)
  grey = run_both("decode", GREY_PNG)[0]["image"]
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_value_ops_are_exact():
  image = np.array([[[0, 128, 255]]], np.uint8)
  out = run_both("value_range(-1, 1)", image)[0]["image"]
  np.testing.assert_allclose(out, [[[-1, 128 / 127.5 - 1, 1]]], atol=1e-6)
  out = run_both("value_range(0, 1)|normalize((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))", image)[0]["image"]
  np.testing.assert_allclose(out, [[[-2, (128 / 255 - 0.5) / 0.5, 0.5]]], atol=1e-6)


def test_geometry_ops_match_numpy():
  np.testing.assert_array_equal(run_both("central_crop(20)", IMAGE)[0]["image"], IMAGE[10:30, 14:34])
  np.testing.assert_array_equal(run_both("flip_lr(1.0)", IMAGE)[0]["image"], IMAGE[:, ::-1])
  np.testing.assert_array_equal(run_both("flip_lr(0.0)", IMAGE)[0]["image"], IMAGE)
  padded = run_both("pad(1, value=7)", IMAGE)[0]["image"]
  assert padded[0].max() == 7 and padded[:, 0].max() == 7
  np.testing.assert_array_equal(padded[1:-1, 1:-1], IMAGE)
  crop = run_both("random_crop(24)", IMAGE)[0]["image"]
  hits = [(y, x) for y in range(17) for x in range(25) if np.array_equal(IMAGE[y:y + 24, x:x + 24], crop)]
  assert len(hits) == 1


def test_inception_crop_area_and_ratio_bounds():
  fn = ops.get_preprocess_fn("inception_crop(area_min=0.3, area_max=0.5, ratio_min=0.75, ratio_max=1.33)")
  big = np.zeros((100, 120, 3), np.uint8)
  for s in range(10):
    h, w = fn({"image": tf.constant(big), "label": 0}, tf.constant([s, 0], tf.int64))["image"].shape[:2]
    assert 0.3 * 0.95 <= h * w / 12000 <= 0.5 * 1.05, (h, w)
    assert 0.7 <= w / h <= 1.4, (h, w)


def test_policy_transforms_match_pillow():
  image_ops = pytest.importorskip("PIL.ImageOps")
  from PIL import Image
  pil = Image.fromarray(IMAGE)
  np.testing.assert_array_equal(aa.equalize(tf.constant(IMAGE)).numpy(),
                                np.asarray(image_ops.equalize(pil)))
  np.testing.assert_array_equal(aa.autocontrast(tf.constant(IMAGE)).numpy(),
                                np.asarray(image_ops.autocontrast(pil)))
  np.testing.assert_array_equal(aa.posterize(tf.constant(IMAGE), 3).numpy(),
                                np.asarray(image_ops.posterize(pil, 3)))
  np.testing.assert_array_equal(aa.solarize(tf.constant(IMAGE), 100).numpy(),
                                np.asarray(image_ops.solarize(pil, 100)))
  np.testing.assert_array_equal(aa.invert(tf.constant(IMAGE)).numpy(), 255 - IMAGE)
  rotated = aa.rotate(tf.constant(IMAGE), 90.0).numpy()
  square = IMAGE[:40, 4:44]
  np.testing.assert_array_equal(aa.rotate(tf.constant(square), 90.0).numpy()[1:-1, 1:-1],
                                np.rot90(square, 1)[1:-1, 1:-1])
  assert rotated.shape == IMAGE.shape
  shifted = aa.translate_x(tf.constant(IMAGE), 5.0).numpy()
  np.testing.assert_array_equal(shifted[:, 5:], IMAGE[:, :-5])
  assert (shifted[:, :5] == aa.FILL).all()


# ---------------------------------------------------------------------------
# The string parser and its errors.
# ---------------------------------------------------------------------------
def test_parser_accepts_literals_and_keywords():
  calls = ops.parse(" decode | inception_crop((224, 200), area_min=0.5)|keep('image', 'x|y') ")
  assert [c.name for c in calls] == ["decode", "inception_crop", "keep"]
  assert calls[1].args == ((224, 200),) and dict(calls[1].kwargs) == {"area_min": 0.5}
  assert calls[2].args == ("image", "x|y")
  assert ops.parse("") == []


@pytest.mark.parametrize("spec, message", [
    ("decode|flip",
     r"Unknown preprocessing op 'flip'.*Did you mean 'flip_lr'.*Registered ops: .*autoaugment.*value_range"),
    ("decode||flip_lr", "Empty op"),
    ("resize(", "Unclosed bracket"),
    ("resize(size)", "must be Python literals"),
    ("resize(1, 2, 3, 4, 5)", r"Bad arguments in 'resize\(1, 2, 3, 4, 5\)'.*Usage: resize\(size"),
    ("inception_crop(-3)", "size must be a positive int"),
    ("flip_lr(prob=2)", r"prob must be in \[0, 1\]"),
    ("resize(8, method='cubic')", "method must be one of"),
    ("onehot()", "missing a required argument: 'depth'"),
    ("autoaugment('v9')", "policy must be one of"),
    ("decode|two_views|two_views", "more than once"),
    ("decode|local_crops(2)|two_views", "local_crops must come after two_views"),
    ("decode|flip_lr|local_crops(2)", "local_crops must come after two_views"),
    ("decode|two_views|local_crops(0)|flip_lr", "a number of crops >= 1, got 0"),
    ("decode|two_views|local_crops(2)|local_crops(2)", "local_crops appears more than once"),
])
def test_bad_strings_raise_clear_errors(spec, message):
  with pytest.raises(PreprocessError, match=message):
    ops.get_preprocess_fn(spec)
  assert issubclass(PreprocessError, DatasetError)


def test_op_on_missing_feature_is_reported():
  fn = ops.get_preprocess_fn("onehot(3, key='labels')")
  with pytest.raises(PreprocessError, match="acts on the feature 'labels'"):
    fn({"image": tf.constant(IMAGE), "label": tf.constant(1)})


def test_inception_crop_keeps_the_channel_count_for_later_ops():
  """In graph mode autoaugment needs a static channel count after the crop."""
  png = tf.io.encode_png(tf.zeros([40, 48, 3], tf.uint8))
  jpeg = tf.io.encode_jpeg(tf.zeros([40, 48, 3], tf.uint8))
  for spec in ("inception_crop(32)|autoaugment", "decode|inception_crop(32)|autoaugment"):
    fn = ops.get_preprocess_fn(spec)
    graph = tf.function(lambda img: fn({"image": img, "label": tf.constant(0, tf.int64)},
                                       tf.constant([1, 2], tf.int64))["image"],
                        input_signature=[tf.TensorSpec([], tf.string)])
    for encoded in (png, jpeg):
      assert graph(encoded).shape == (32, 32, 3), spec


# ---------------------------------------------------------------------------
# random_erasing: timm's RandomErasing, its statistics over many seeds.
# ---------------------------------------------------------------------------
ERASE = "value_range(0, 1)|random_erasing(1.0)"
# Keeps test_every_registered_op_is_covered whole; the eager/tf.data check is the test below.
CASES[ERASE] = (IMAGE, (40, 48, 3), tf.float32, (-8, 8))


def _erased(spec, count, side=32, fill=5.0):
  """`count` constant float images (value `fill`) through `spec`, seed i for image i, mapped
  by tf.data in one batch: (images, erased mask)."""
  fn = ops.get_preprocess_fn(spec)
  image = tf.fill([side, side, 3], fill)
  ds = tf.data.Dataset.range(count).map(
      lambda i: fn({"image": image, "label": i}, tf.stack([i, tf.constant(7, tf.int64)])))
  images = next(ds.batch(count).as_numpy_iterator())["image"]
  return images, (images != fill).any(-1)


def test_random_erasing_eager_equals_tf_data_and_follows_the_seed():
  eager, graph = run_both(ERASE, IMAGE)
  np.testing.assert_array_equal(eager["image"], graph["image"])
  assert eager["image"].dtype == np.float32 and eager["image"].shape == (40, 48, 3)
  first, _ = _erased("random_erasing(1.0)", 6)
  again, _ = _erased("random_erasing(1.0)", 6)
  np.testing.assert_array_equal(first, again)
  assert len({im.tobytes() for im in first}) == 6


def test_random_erasing_fraction_area_and_aspect_bounds():
  n, side = 400, 32
  images, mask = _erased("random_erasing(0.25)", n, side)  # timm's area and aspect defaults
  erased = mask.any((1, 2))
  assert abs(erased.mean() - 0.25) < 0.06, erased.mean()  # 400 draws: std 0.022
  heights, widths = [], []
  for m in mask[erased]:
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert m.sum() == h * w, "the erased region is one rectangle"
    heights.append(h)
    widths.append(w)
  h, w = np.array(heights, float), np.array(widths, float)
  # h = round(sqrt(a r)), w = round(sqrt(a / r)) for an area a in [0.02, 1/3] of the image
  # and r in [0.3, 1/0.3]: the rounding bounds a and r from h and w.
  assert ((h + 0.5) * (w + 0.5) >= 0.02 * side ** 2).all()
  assert ((h - 0.5) * (w - 0.5) <= side ** 2 / 3).all()
  assert ((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 1 / 0.3).all()
  area = h * w / side ** 2
  assert area.min() < 0.06 and area.max() > 0.25 and (h > w).any() and (w > h).any()
  # 'pixel' mode: standard normal noise, independent per pixel and channel.
  noise = images[erased][mask[erased]]
  assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05, (noise.mean(), noise.std())


def test_random_erasing_fixed_rectangle_positions_and_modes():
  # Area 1/4 and aspect 1 fix a 16x16 square; its corner is uniform over 0..16 inclusive.
  images, mask = _erased("random_erasing(1.0, 0.25, 0.25, 1.0, 1.0, mode='const')", 200)
  tops = mask.any(2).argmax(1)
  lefts = mask.any(1).argmax(1)
  assert (mask.sum((1, 2)) == 256).all() and (images[mask] == 0).all()
  assert set(tops) == set(range(17)) and set(lefts) == set(range(17))
  # 'rand': one normal value per channel over the whole rectangle.
  images, mask = _erased("random_erasing(1.0, mode='rand')", 8)
  for image, m in zip(images, mask):
    values = image[m]
    np.testing.assert_array_equal(values, np.broadcast_to(values[0], values.shape))
  _, mask = _erased("random_erasing(0.0)", 8)
  assert not mask.any()


@pytest.mark.parametrize("spec, message", [
    ("random_erasing(1.5)", r"prob must be in \[0, 1\]"),
    ("random_erasing(0.25, min_area=0.5, max_area=0.2)", "need 0 < min_area <= max_area <= 1"),
    ("random_erasing(0.25, min_aspect=0)", "need 0 < min_aspect <= max_aspect"),
    ("random_erasing(0.25, mode='noise')", "mode must be one of"),
])
def test_random_erasing_bad_arguments(spec, message):
  with pytest.raises(PreprocessError, match=message):
    ops.get_preprocess_fn(spec)
  with pytest.raises(PreprocessError, match="needs a float image.*after value_range"):
    ops.get_preprocess_fn("random_erasing(0.25)")({"image": tf.constant(IMAGE), "label": 0})
