"""Using what was trained: eval preprocessing against timm, and the tools' handling of bad input."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest

from vision_jax.data import eval_preprocess

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


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
  sys.path.insert(0, TOOLS)
  try:
    module = __import__(tool)
    code = module.main(args)
  finally:
    sys.path.remove(TOOLS)
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A converted-weights directory of a tiny random classifier, and a folder of images."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("tools")
  module = models.create_model("cifar_resnet20", num_classes=10)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  weights = weights_io.save_converted(str(root / "weights"), variables, "cifar_resnet20", 10)
  images = root / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"ok{i}.png")
  (images / "broken.jpg").write_bytes(b"this is not a jpeg")
  return weights, str(images), root


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
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.data import digits_dataset  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  module = models.create_model("cifar_resnet20", num_classes=10)
  variables = module.init(jax.random.key(1), jnp.zeros((1, 16, 16, 1)))
  weights = weights_io.save_converted(str(tmp_path / "w"), variables, "cifar_resnet20", 10)
  metrics_path, confusion_path = str(tmp_path / "m.json"), str(tmp_path / "c.png")
  code, _, err = _run("evaluate", ["--weights", weights, "--data", "digits", "--output",
                                   metrics_path, "--confusion", confusion_path], capsys)
  assert code == 0, err
  metrics = json.load(open(metrics_path, encoding="utf-8"))
  images, labels = digits_dataset(image_size=16).eval
  predicted = np.asarray(module.apply(variables, images)).argmax(1)
  assert metrics["count"] == len(labels) == 360
  assert metrics["top1"] == pytest.approx(np.mean(predicted == labels))
  per_class = [np.mean(predicted[labels == c] == c) for c in range(10)]
  assert [metrics["per_class_top1"][str(c)] for c in range(10)] == pytest.approx(per_class)
  assert os.path.getsize(confusion_path) > 0
