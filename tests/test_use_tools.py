"""Using what was trained: eval preprocessing against timm, and the tools' handling of bad input."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest

from tests.conftest import run_tool_here, tool_module
from vision_jax.data import eval_preprocess
from tests import jitted



@pytest.mark.parametrize("tag", ["resnet50.a1_in1k", "vit_base_patch16_224.augreg2_in21k_ft_in1k",
                                 "resnet50.tv_in1k", "tf_efficientnet_b3.ns_jft_in1k"])
def test_eval_preprocess_matches_timm_on_photographs(tag):
  timm = pytest.importorskip("timm")
  skdata = pytest.importorskip("skimage.data")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from timm.data import create_transform, resolve_data_config  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from vision_jax.data import ops  # pylint: disable=import-outside-toplevel
  cfg = timm.models.get_pretrained_cfg(tag).to_dict()
  # crop 0.95 / 0.9 / 0.875 / 0.904, bicubic and bilinear, 224 and 300 pixels.
  reference = create_transform(**resolve_data_config({}, pretrained_cfg=cfg))
  fn = ops.get_preprocess_fn(eval_preprocess(cfg), outputs=("image",))
  diffs = []
  for photo in (skdata.astronaut(), skdata.chelsea(), skdata.coffee()):  # portrait/landscape
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    ref = reference(Image.fromarray(photo)).numpy().transpose(1, 2, 0)
    ours = fn({"image": tf.constant(buffer.getvalue())})["image"].numpy()
    assert ours.shape == ref.shape
    diffs.append(np.abs(ours - ref).ravel())
  diffs = np.concatenate(diffs)
  print(tag, f"mean {diffs.mean():.4f} p99 {np.percentile(diffs, 99):.4f}")
  assert diffs.mean() <= 0.02 and np.percentile(diffs, 99) <= 0.15


def _run(tool: str, args: list[str], capsys):
  return run_tool_here(tool, *args, capsys=capsys)


def random_variables(module, input_shape, seed=0, **init_kwargs):
  """Random variables of `module`'s shapes, drawn with numpy (flax's initialisers run eagerly
  compile one program per operation: about 25 s of CPU for a cifar_resnet20): kernels
  N(0, 1/fan_in), norm scales and variances one, biases and means zero. `init_kwargs` go to
  `module.init` (e.g. train=False)."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(functools.partial(module.init, **init_kwargs), jax.random.key(0),
                          jnp.zeros(input_shape))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A converted-weights directory of a tiny random classifier, and a folder of images."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("tools")
  module = models.create_model("cifar_resnet20", num_classes=10)
  variables = random_variables(module, (1, 32, 32, 3))
  weights = weights_io.save_converted(str(root / "weights"), variables, "cifar_resnet20", 10)
  images = root / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"ok{i}.png")
  (images / "broken.jpg").write_bytes(b"this is not a jpeg")
  return weights, str(images), root


@pytest.mark.xdist_group("use_tools_converted")  # one worker builds the `converted` fixture
def test_tools_skip_bad_images_refuse_overwrites_and_name_bad_dirs(converted, capsys, tmp_path):
  weights, images, root = converted
  out = str(tmp_path / "preds.jsonl")
  code, _, err = _run("predict", ["--weights", weights, images, "--output", out, "--top-k", "3"],
                      capsys)
  assert code == 0 and "broken.jpg" in err
  lines = [json.loads(line) for line in open(out, encoding="utf-8")]
  assert [os.path.basename(l["image"]) for l in lines] == ["ok0.png", "ok1.png"]
  assert len(lines[0]["top_k"]) == 3 and lines[0]["top_k"][0]["name"].startswith("class_")
  code, _, err = _run("predict", ["--weights", weights, images, "--output", out], capsys)
  assert code == 2 and "--overwrite" in err
  empty = root / "empty_run"
  empty.mkdir()
  code, _, err = _run("predict", ["--workdir", str(empty), images], capsys)
  assert code == 2 and str(empty) in err and "no checkpoint" in err
  code, _, err = _run("explain", ["--weights", weights, images, "--method", "rollout",
                                  "--output-dir", str(tmp_path / "x")], capsys)
  assert code == 2 and "rollout needs attention" in err
  code, stdout, _ = _run("explain", ["--weights", weights, images, "--method", "gradcam",
                                     "--output-dir", str(tmp_path / "x")], capsys)
  assert code == 0 and sorted(os.listdir(tmp_path / "x")) == [
      "grid_gradcam.png", "ok0_gradcam.png", "ok1_gradcam.png"]


def test_evaluate_reports_the_accuracy_of_the_weights_on_digits(capsys, tmp_path):
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.data import digits_dataset  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  module = models.create_model("cifar_resnet20", num_classes=10)
  variables = random_variables(module, (1, 16, 16, 1), seed=1)
  weights = weights_io.save_converted(str(tmp_path / "w"), variables, "cifar_resnet20", 10)
  metrics_path, confusion_path = str(tmp_path / "m.json"), str(tmp_path / "c.png")
  # Names are checked before anything is loaded: a file name with a suffix the tool cannot write.
  code, _, err = _run("evaluate", ["--weights", weights, "--data", "digits", "--confusion",
                                   str(tmp_path / "c.pdf")], capsys)
  assert code == 2 and "--confusion" in err and "writes .png files, not '.pdf'" in err
  code, stdout, err = _run("evaluate", ["--weights", weights, "--data", "digits", "--output",
                                        metrics_path, "--confusion", confusion_path,
                                        "--worst", "3"], capsys)
  assert code == 0, err
  metrics = json.load(open(metrics_path, encoding="utf-8"))
  images, labels = digits_dataset(image_size=16).eval
  predicted = np.asarray(jitted.apply(module, variables, images)).argmax(1)
  assert metrics["count"] == len(labels) == 360
  assert metrics["top1"] == pytest.approx(np.mean(predicted == labels))
  per_class = [np.mean(predicted[labels == c] == c) for c in range(10)]
  assert [metrics["per_class_top1"][str(c)] for c in range(10)] == pytest.approx(per_class)
  assert os.path.getsize(confusion_path) > 0
  # The printed summary: count, top-1, top-5, then the three worst classes in order, each with
  # the class it is most often mistaken for. The JSON went to the file, not to the screen.
  assert "{" not in stdout
  rows = [line.split() for line in stdout.splitlines()]
  assert rows[:3] == [["images", "360"], ["top-1", f"{metrics['top1']:.4f}"],
                      ["top-5", f"{metrics['top5']:.4f}"]]
  imperfect = [c for c in np.argsort(per_class, kind="stable") if per_class[c] < 1]
  header = rows.index(["worst", "classes", "top-1", "images", "most", "often", "taken", "for"])
  table = rows[header + 1:header + 4]
  assert len(imperfect) >= 3  # random weights: most digits are misread
  assert [r[0] for r in table] == [str(c) for c in imperfect[:3]]
  assert rows[header + 4:] == [["wrote", metrics_path], ["wrote", confusion_path]]
  for r, c in zip(table, imperfect):
    wrong = np.bincount(predicted[(labels == c) & (predicted != c)], minlength=10)
    assert r[1:] == [f"{per_class[c]:.4f}", str(int((labels == c).sum())),
                     str(int(wrong.argmax())), f"({int(wrong.max())})"]
  # A directory takes the tool's own file names.
  code, _, err = _run("evaluate", ["--weights", weights, "--data", "digits", "--output",
                                   str(tmp_path / "results") + "/", "--confusion",
                                   str(tmp_path / "results")], capsys)
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / "results")) == ["confusion.png", "metrics.json"]


# --- Where the tools write and what they print (issue 30) -------------------------------------


@pytest.mark.parametrize("spec,size", [
    ("decode|timm_resize_crop(32, crop_pct=1.0)|value_range(0, 1)", (300, 451)),
    ("decode|timm_resize_crop(24, crop_pct=0.875)|value_range(0, 1)", (97, 61)),
    ("decode|timm_resize_crop(32, crop_pct=0.9, crop_mode='squash')", (50, 80)),
    ("decode|resize_small(40)|central_crop(32)|value_range(-1, 1)", (90, 50)),
    ("decode|resize((20, 30))|pad(2)|normalize(0.5, 0.5)", (40, 70)),
])
def test_input_window_finds_where_the_pipeline_put_each_pixel(spec, size):
  """A photograph whose red and green channels hold each pixel's row and column goes through
  the real pipeline; the coordinates read back from the model input match the window."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from vision_jax import explain  # pylint: disable=import-outside-toplevel
  from vision_jax.data import ops  # pylint: disable=import-outside-toplevel
  height, width = size
  yy, xx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  photo = np.stack([yy / height, xx / width, 0 * yy], -1) * 255
  buffer = io.BytesIO()
  Image.fromarray(np.round(photo).astype(np.uint8)).save(buffer, format="PNG")
  geometry_only = "|".join(p for p in spec.split("|") if not p.startswith(("value", "normal")))
  fn = ops.get_preprocess_fn(geometry_only, outputs=("image",))
  seen = fn({"image": tf.constant(buffer.getvalue())})["image"].numpy().astype(np.float64)
  window = explain.input_window(spec, height, width)
  assert seen.shape[:2] == (window.input_height, window.input_width)
  iy, ix = np.meshgrid(np.arange(window.input_height) + 0.5, np.arange(window.input_width) + 0.5,
                       indexing="ij")
  row = (window.top + iy * window.height / window.input_height) / height * 255
  col = (window.left + ix * window.width / window.input_width) / width * 255
  inside = (row > 0) & (row < 255) & (col > 0) & (col < 255)  # not the padding
  # Within about one uint8 step: the resamplers round to uint8.
  assert np.abs(seen[..., 0] - row)[inside].max() < 1.0
  assert np.abs(seen[..., 1] - col)[inside].max() < 1.0


def test_input_window_refuses_random_geometry_and_orient_turns_as_pil():
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  from vision_jax import explain  # pylint: disable=import-outside-toplevel
  with pytest.raises(explain.PlacementError, match=r"inception_crop\(32\).*--size input"):
    explain.input_window("decode|inception_crop(32)|value_range(0, 1)", 50, 60)
  with pytest.raises(explain.PlacementError, match="Unknown preprocessing op 'rezise'"):
    explain.input_window("decode|rezise(32)", 50, 60)
  stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
  for orientation in range(1, 9):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif)
    with Image.open(buffer) as image:
      shown = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(explain.orient(stored, orientation), shown)


_tool_module = tool_module


def _displayed(array: np.ndarray, orientation: int) -> np.ndarray:
  """`array` (uint8) as a viewer shows it under EXIF `orientation`, by PIL."""
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  exif = Image.Exif()
  exif[0x0112] = orientation
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG", exif=exif)
  with Image.open(buffer) as image:
    return np.asarray(ImageOps.exif_transpose(image))


@pytest.mark.xdist_group("use_tools_converted")  # one worker builds the `converted` fixture
def test_explain_draws_the_map_on_an_exif_rotated_photograph_where_the_input_had_it(
    converted, capsys, tmp_path, monkeypatch):
  """The 'method' here is the greenness of the model input: its hot region is wherever the
  preprocessing put the green square painted on the photograph. On the overlay, at the
  photograph's displayed size, it must sit on the square as a viewer sees it."""
  skdata = pytest.importorskip("skimage.data")
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  weights, _, _ = converted
  stored = skdata.chelsea().copy()  # 300 x 451, stored landscape
  stored[40:100, 110:170] = (0, 255, 0)
  exif = Image.Exif()
  exif[0x0112] = 6  # shown turned 90 degrees clockwise: 451 x 300, portrait
  photo = tmp_path / "cat.jpg"
  Image.fromarray(stored).save(photo, exif=exif, quality=95)
  with Image.open(photo) as image:
    shown = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
  assert shown.shape == (451, 300, 3)

  tool = _tool_module("explain")

  def greenness(explain_lib, model, images, targets, args):
    del explain_lib, targets, args
    rgb = images * np.asarray(model.std) + np.asarray(model.mean)
    green = np.clip(rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2]), 0, None)
    return green / green.max(axis=(1, 2), keepdims=True)

  monkeypatch.setattr(tool, "compute_maps", greenness)
  out = tmp_path / "maps" / "cat_overlay.png"
  code, stdout, err = _run("explain", ["--weights", weights, str(photo), "--out", str(out),
                                       "--save-map"], capsys)
  assert code == 0, err
  assert sorted(os.listdir(out.parent)) == ["cat_overlay.npy", "cat_overlay.png"]  # no grid
  assert f"{out}: gradcam for class" in stdout and "300x451" in stdout
  with Image.open(out) as image:
    overlay = np.asarray(image)
  heat = np.load(out.with_suffix(".npy"))
  assert overlay.shape == (451, 300, 3) and heat.shape == (451, 300)

  square = (shown[..., 1] > 200) & (shown[..., 0] < 90) & (shown[..., 2] < 90)
  hot = np.nan_to_num(heat) > 0.5
  rows, cols = np.nonzero(hot)
  square_rows, square_cols = np.nonzero(square)
  assert square_rows.min() <= rows.mean() <= square_rows.max()
  assert square_cols.min() <= cols.mean() <= square_cols.max()
  assert (hot & square).sum() / (hot | square).sum() > 0.6  # the same region, not just near it

  # timm's eval crop at 32 px: 300 x 451 -> 32 x 48, columns 8..40 kept, i.e. stored
  # columns [8 * 451 / 48, 40 * 451 / 48); the turn makes them displayed rows.
  seen_stored = np.zeros((300, 451), np.uint8)
  centres = np.arange(451) + 0.5
  seen_stored[:, (centres >= 8 * 451 / 48) & (centres < 40 * 451 / 48)] = 1
  np.testing.assert_array_equal(np.isfinite(heat), _displayed(seen_stored, 6).astype(bool))
  unseen = ~np.isfinite(heat)
  assert unseen[:70].all() and unseen[-70:].all() and not unseen[80:370].any()
  # What the model did not see is the photograph, darkened, with no heat colour.
  np.testing.assert_allclose(overlay[unseen], 0.35 * shown[unseen], atol=1.01)

  code, _, err = _run("explain", ["--weights", weights, str(photo), "--out",
                                  str(tmp_path / "small.png"), "--size", "input"], capsys)
  assert code == 0, err
  with Image.open(tmp_path / "small.png") as image:
    assert image.size == (32, 32)


@pytest.mark.xdist_group("use_tools_converted")  # one worker builds the `converted` fixture
def test_explain_out_is_a_file_for_one_image_and_a_directory_for_several(converted, capsys,
                                                                          tmp_path):
  weights, images, _ = converted
  listing = [os.path.join(images, f"ok{i}.png") for i in range(2)]
  code, _, err = _run("explain", ["--weights", weights, *listing, "--out",
                                  str(tmp_path / "expl.png")], capsys)
  assert code == 2 and "names one file, but 2 images were given; give a directory" in err
  assert not (tmp_path / "expl.png").exists()
  code, _, err = _run("explain", ["--weights", weights, listing[0], "--out",
                                  str(tmp_path / "expl.jpeg")], capsys)
  assert code == 2 and "writes .png files, not '.jpeg'" in err
  # The old spelling of the option, a folder that does not exist yet, inputs from two folders
  # with the same file name.
  for folder in ("cats", "dogs"):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "ok0.png").write_bytes(open(listing[0], "rb").read())
  code, _, err = _run("explain", ["--weights", weights, str(tmp_path / "cats" / "ok0.png"),
                                  str(tmp_path / "dogs" / "ok0.png"),
                                  "--output-dir", str(tmp_path / "new" / "maps")], capsys)
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / "new" / "maps")) == [
      "cats_ok0_gradcam.png", "dogs_ok0_gradcam.png", "grid_gradcam.png"]
  code, _, err = _run("explain", ["--weights", weights, listing[0], "--out",
                                  str(tmp_path / "new" / "maps" / "cats_ok0_gradcam.png")],
                      capsys)
  assert code == 2 and "exists; pass --overwrite" in err


@pytest.mark.xdist_group("use_tools_converted")  # one worker builds the `converted` fixture
def test_predict_prints_a_table_by_default_and_json_lines_on_request(converted, capsys,
                                                                     tmp_path):
  weights, images, _ = converted
  code, table, err = _run("predict", ["--weights", weights, images, "--top-k", "3"], capsys)
  assert code == 0 and "broken.jpg" in err
  code, text, _ = _run("predict", ["--weights", weights, images, "--top-k", "3", "--json"],
                       capsys)
  assert code == 0
  lines = [json.loads(line) for line in text.splitlines()]
  rows = table.splitlines()
  assert rows[0].split() == ["image", "top-1", "p", "top-2", "p", "top-3", "p"]
  assert len(rows) == 1 + len(lines) == 3
  for row, line in zip(rows[1:], lines):
    expected = [line["image"]]
    for entry in line["top_k"]:
      expected += [entry["name"], f"{entry['probability']:.3f}"]
    assert row.split() == expected
  # Aligned: every probability column ends at the same place on every row.
  ends = [[m.end() for m in re.finditer(r"\d\.\d{3}", r)] for r in rows[1:]]
  assert len(ends[0]) == 3 and ends[0] == ends[1]

  # --sheet: a file while one sheet holds the images; a directory when they need several.
  sheet = tmp_path / "sheet.png"
  code, _, err = _run("predict", ["--weights", weights, images, "--sheet", str(sheet)], capsys)
  assert code == 0 and sheet.stat().st_size > 0
  code, _, err = _run("predict", ["--weights", weights, images, "--sheet",
                                  str(tmp_path / "one.png"), "--per-sheet", "1"], capsys)
  assert code == 2 and "3 images make 3 sheets" in err and not (tmp_path / "one.png").exists()
  code, _, err = _run("predict", ["--weights", weights, images, "--sheet",
                                  str(tmp_path / "sheets") + "/", "--per-sheet", "1"], capsys)
  assert code == 0, err
  # Three files were named, but the broken one is not drawn: two sheets.
  assert sorted(os.listdir(tmp_path / "sheets")) == ["sheet_1.png", "sheet_2.png"]
