"""The dataset report and the checks before training (vision_jax/data/report.py, tools/inspect_data.py).

Folders are built from the embedded digits (upscaled to 32x32), so that images have
structure; every degenerate case goes through the command line in this process and must
end with one `error:` line, exit code 2 and no checkpoint or metrics file, before any
program is compiled.
"""

import io
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from tests.test_faults import cli, error_of
from tools import inspect_data
from vision_jax import data, main
from vision_jax.data import balance, report
from vision_jax.data import digits as digits_lib

from tests.conftest import ROOT  # noqa: E402  (the repository root)
_DIGITS = digits_lib.load_digits("all")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv(main.VERBOSE_ENV, raising=False)
  monkeypatch.setattr(main, "_setup_logging", lambda verbose=False: None)  # keep pytest's logging


def digit(index: int, size: int = 32) -> Image.Image:
  pixels = np.round(_DIGITS[0][index, ..., 0].astype(np.float32) * 255 / 16).astype(np.uint8)
  return Image.fromarray(pixels).resize((size, size), Image.BILINEAR)


def of_class(label: int, count: int, skip: int = 0) -> list[int]:
  return list(np.flatnonzero(_DIGITS[1] == label)[skip:skip + count])


def save(image: Image.Image, path, **kwargs) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **kwargs)
  return str(path)


def write_folder(root, layout: dict[str, dict[str, list[int]]]) -> str:
  """root/<split>/<class>/<digit index>.png for {split: {class: [digit indices]}}."""
  for split, classes in layout.items():
    for name, indices in classes.items():
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in indices:
        save(digit(i), os.path.join(root, split, name, f"{i}.png"))
  return str(root)


def clean_layout(per_class: int = 8, classes=("cat", "dog")) -> dict:
  return {"train": {c: of_class(k, per_class) for k, c in enumerate(classes)},
          "val": {c: of_class(k, 2, skip=per_class) for k, c in enumerate(classes)}}


# ---------------------------------------------------------------------------
# The report: planted copies, bad files, the JSON schema, the picture grid.
# ---------------------------------------------------------------------------
def test_report_finds_planted_copies_and_bad_files_and_writes_json_and_grid(tmp_path, capsys):
  root = tmp_path / "images"
  layout = {"train": {f"c{k}": of_class(k, 6) for k in range(3)},
            "val": {f"c{k}": of_class(k, 2, skip=6) for k in range(3)}}
  write_folder(root, layout)
  train = {k: [str(root / "train" / f"c{k}" / f"{i}.png") for i in layout["train"][f"c{k}"]]
           for k in range(3)}
  # Planted across splits: an exact copy, a resized copy, a JPEG-recompressed copy.
  shutil.copy(train[1][0], root / "val" / "c1" / "copy.png")
  resized = save(Image.open(train[2][0]).resize((48, 48), Image.BILINEAR),
                 root / "val" / "c2" / "resized.png")
  recompressed = save(Image.open(train[0][0]), root / "val" / "c0" / "recompressed.jpg", quality=80)
  # Inside train: a duplicate, a duplicate in another class, files that cannot be used.
  shutil.copy(train[0][1], root / "train" / "c0" / "dup.png")
  shutil.copy(train[1][2], root / "train" / "c2" / "conflict.png")
  (root / "train" / "c1" / "empty.png").write_bytes(b"")
  buffer = io.BytesIO()
  digit(of_class(5, 1)[0]).save(buffer, "JPEG")
  (root / "train" / "c2" / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
  (root / "train" / "c0" / "photo.webp").write_bytes(b"RIFF0000WEBPVP8 ")
  (root / "train" / "c0" / "notes.txt").write_text("not an image")
  save(digit(of_class(6, 1)[0]).convert("CMYK"), root / "train" / "c1" / "cmyk.jpg")

  out_json, grid = tmp_path / "report.json", tmp_path / "grid.png"
  code = inspect_data.main(["--data", f"folder:{root}", "--image-size", "96", "--json",
                            str(out_json), "--grid", str(grid)])
  printed = capsys.readouterr().out
  assert code == 1, printed  # the copies across splits are an error under checks='error'
  rep = json.loads(out_json.read_text())
  assert rep["schema_version"] == report.SCHEMA_VERSION and rep["source"] == f"folder:{root}"
  assert rep["classes"] == ["c0", "c1", "c2"] and rep["expected_input"] == 96
  assert (rep["train_split"], rep["eval_split"]) == ("train", "val")
  tr, ev = rep["splits"]["train"], rep["splits"]["val"]
  assert tr["examples"] == 6 * 3 + 5 and ev["examples"] == 2 * 3 + 3
  assert tr["class_counts"] == {"c0": 7, "c1": 8, "c2": 8}
  assert sorted((os.path.basename(p["name"]), p["problem"]) for p in tr["problem_files"]) == [
      ("empty.png", "empty file"), ("truncated.jpg", "truncated")]
  assert sorted(map(os.path.basename, tr["skipped_files"])) == ["notes.txt", "photo.webp"]
  assert tr["modes"] == {"L": 20, "CMYK": 1} and tr["constant_images"] == 0
  assert sorted(len(g) for g in tr["duplicate_groups"]) == [2, 2]
  assert [sorted(map(os.path.basename, g)) for g in tr["conflicting_label_groups"]] == [
      sorted(["conflict.png", f"{layout['train']['c1'][2]}.png"])]
  sizes = tr["sizes"]
  assert sizes["height"] == {"min": 32.0, "median": 32.0, "max": 32.0}
  assert sum(sizes["min_side_histogram"]["counts"]) == 21 and sizes["smaller_than_input"] == 21
  assert len(sizes["aspect_ratio_histogram"]["edges"]) == len(
      sizes["aspect_ratio_histogram"]["counts"]) + 1
  cross = rep["cross_split"]
  assert cross["exact"] == [{"train": train[1][0], "eval": str(root / "val" / "c1" / "copy.png")}]
  near = {p["eval"]: p["train"] for p in cross["near"]}
  assert near == {resized: train[2][0], recompressed: train[0][0]}, cross["near"]
  assert all(p["hash_distance"] <= report.NEAR_DUPLICATE_BITS and
             p["correlation"] >= report.NEAR_DUPLICATE_CORRELATION for p in cross["near"])
  assert cross["eval_images_with_duplicates"] == 3
  codes = {f["code"]: f["severity"] for f in rep["findings"]}
  assert codes == {"cross_split_duplicates": "error", "undecodable_files": "warning",
                   "skipped_extensions": "warning", "colour_modes": "warning",
                   "duplicates_within_split": "warning", "conflicting_labels": "warning",
                   "small_images": "warning"}, codes
  assert "3 image(s) of the evaluation split 'val' are also in the training split" in printed
  with Image.open(grid) as image:  # rendered once: one row per class plus the copies
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
  # Allowed copies are no error; with checks='warn' leakage is a warning.
  assert inspect_data.main(["--data", f"folder:{root}", "--max-cross-split-duplicates", "3"]) == 0
  assert inspect_data.main(["--data", f"folder:{root}", "--checks", "warn"]) == 0
  assert inspect_data.main(["--data", f"folder:{tmp_path / 'nowhere'}"]) == 2
  assert "error: The image folder" in capsys.readouterr().err


def test_no_false_alarm_on_the_digits_and_the_tool_reads_arrays(capsys):
  """The embedded digits (1,437 train / 360 test, no copies between them): nothing is found."""
  assert inspect_data.main(["--data", "digits"]) == 0
  printed = capsys.readouterr().out
  assert "'eval' images also in 'train': 0 (0 exact, 0 near)" in printed
  assert "No problem found." in printed
  rep, _ = report.inspect("digits")
  assert rep["splits"]["train"]["examples"] == 1437 and rep["splits"]["eval"]["examples"] == 360
  assert rep["splits"]["train"]["sizes"]["height"]["median"] == 8.0


def test_tfds_sources_are_reported(tmp_path, capsys):
  from tests.test_data_pipeline import numbered_as_dataset, write_metadata
  import tensorflow_datasets as tfds
  write_metadata(tmp_path, "cifar10", {"train": 12, "test": 6})
  with tfds.testing.mock_data(data_dir=str(tmp_path), as_dataset_fn=numbered_as_dataset):
    code = inspect_data.main(["--data", "cifar10", "--data-dir", str(tmp_path),
                              "--max-examples", "10", "--json", str(tmp_path / "r.json")])
  rep = json.loads((tmp_path / "r.json").read_text())
  assert len(rep["classes"]) == 10 and rep["source"] == "cifar10"
  assert rep["splits"]["train"]["examples"] == 10 and rep["splits"]["test"]["examples"] == 6
  assert rep["splits"]["train"]["sizes"]["width"]["max"] == 8.0
  assert rep["splits"]["train"]["class_counts"][rep["classes"][3]] == 1  # labels: id % 10
  assert rep["cross_split"]["eval_images_with_duplicates"] == 0
  # The 6 test examples (labels 0..5) miss four training classes: an error by default.
  assert code == 1 and [f["code"] for f in rep["findings"]] == ["eval_classes_missing"]
  capsys.readouterr()


# ---------------------------------------------------------------------------
# Degenerate data: refused before compiling, one line, exit 2, nothing written.
# ---------------------------------------------------------------------------
def _transfer(root, work, *extra):
  return [f"--config=configs/transfer.py:smoke,model=resnet18,dataset=folder:{root}",
          f"--workdir={work}", "--config.batch_size=8", *extra]


def test_degenerate_data_is_refused_before_compiling(tmp_path, capsys, monkeypatch):
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel

  def no_compiling(*args, **kwargs):
    raise AssertionError("a program was compiled before the data was checked")

  monkeypatch.setattr(trainer.steps_lib, "init_state", no_compiling)

  def folder(name, layout):
    return write_folder(tmp_path / name, layout)

  clean = clean_layout()
  one_class = folder("one_class", {"train": {"cat": of_class(0, 8)}, "val": {"cat": of_class(0, 2, 8)}})
  single_label = folder("single_label", {"train": {"cat": of_class(0, 8), "dog": []},
                                         "val": {"cat": of_class(0, 2, 8), "dog": of_class(1, 2)}})
  empty_eval = folder("empty_eval", {"train": clean["train"], "val": {"cat": [], "dog": []}})
  misspelt = folder("misspelt", {"train": clean["train"], "val": {"cat": of_class(0, 2, 8),
                                                                  "dgo": of_class(1, 2, 8)}})
  eval_missing = folder("eval_missing", {"train": clean["train"], "val": {"cat": of_class(0, 2, 8)}})
  no_examples = folder("no_examples", {"train": {**clean["train"], "eel": []},
                                       "val": {**clean["val"], "eel": of_class(2, 2)}})
  leak = folder("leak", clean)
  shutil.copy(tmp_path / "leak" / "train" / "cat" / f"{clean['train']['cat'][0]}.png",
              tmp_path / "leak" / "val" / "cat" / "copy.png")
  identical = folder("identical", {"train": {"cat": [0] * 1, "dog": [0]}, "val": {"cat": [0], "dog": [0]}})
  for split, count in (("train", 8), ("val", 2)):
    for c in ("cat", "dog"):
      for i in range(count):
        shutil.copy(tmp_path / "identical" / "train" / "cat" / "0.png",
                    tmp_path / "identical" / split / c / f"x{i}.png")
  flat = tmp_path / "flat"
  for split, count in (("train", 8), ("val", 2)):
    for k, c in enumerate(("cat", "dog")):
      for i in range(count):
        save(Image.new("L", (32, 32), 40 * k + 3 * i + (100 if split == "val" else 0)),
             flat / split / c / f"{i}.png")
  small = folder("small", clean_layout(per_class=3))
  base = folder("base", clean)
  transfer_pp = "decode|resize(32)|value_range(-1, 1)"
  cases = [  # (args, what the line says)
      (_transfer(one_class, tmp_path / "w1"), "has 1 class(es): a classifier needs at least 2"),
      (_transfer(single_label, tmp_path / "w2"), "Every training example of folder:"),
      (_transfer(empty_eval, tmp_path / "w3"), "The split 'val' is empty"),
      (_transfer(misspelt, tmp_path / "w4"), "has class folder(s) dgo that the training split "
       "lacks ('dgo' looks like 'dog': a misspelt folder?)"),
      (_transfer(eval_missing, tmp_path / "w5"), "The evaluation split 'val' has no example of "
       "the training class(es) dog"),
      (_transfer(no_examples, tmp_path / "w6"), "The training split 'train' has no example of "
       "class(es) eel"),
      (_transfer(leak, tmp_path / "w7"), "1 image(s) of the evaluation split 'val' are also in "
       "the training split 'train' (1 exact, 0 near copies; allowed: "
       "config.data.max_cross_split_duplicates=0)"),
      (_transfer(identical, tmp_path / "w8"), "training images of folder:"),
      (_transfer(flat, tmp_path / "w9"), "are a single flat colour: they hold no picture"),
      (_transfer(small, tmp_path / "w10"), "The training split has 6 examples, fewer than "
       "config.batch_size=8"),
      (_transfer(base, tmp_path / "w11", "--config.data.eval_split=train"),
       "The evaluation split is the training split ('train')"),
      (_transfer(base, tmp_path / "w12", f"--config.data.preprocess_train={transfer_pp}|onehot(5)"),
       "makes one-hot labels of 5 classes, but folder:"),
      (["--config=configs/digits.py:smoke,classes=3", f"--workdir={tmp_path / 'w13'}"],
       "digits has 1 class(es): a classifier needs at least 2"),
      (["--config=configs/digits.py:smoke", "--config.model.name=convnext_atto",
        "--config.data.image_size=8", f"--workdir={tmp_path / 'w14'}"],
       "convnext_atto reduces the input (8, 8) (height, width) to nothing: its layer stages_2"),
      (["--config=configs/digits.py:smoke", "--config.model.name=vit_tiny_patch16_224",
        f"--workdir={tmp_path / 'w15'}"],
       "vit_tiny_patch16_224 cannot run on images of (16, 16, 1) (height, width, channels): its "
       "forward pass fails (ValueError: VisionTransformer was built for 224x224 inputs"),
      (_transfer(base, tmp_path / "w16", "--config.data.checks=sometimes"),
       "config.data.checks='sometimes': choose one of 'error', 'warn', 'off'"),
  ]
  for args, expected in cases:
    line = error_of(*cli(capsys, *args), 2)
    assert expected in line, (args, line)
    work = [a[len("--workdir="):] for a in args if a.startswith("--workdir=")][0]
    assert not os.path.exists(os.path.join(work, "metrics.jsonl")), args
    assert not os.path.exists(os.path.join(work, "checkpoints")), args
  # checks='warn' and a raised max let the leak and the missing class through (up to the
  # first compilation, which this test forbids).
  for args in (_transfer(leak, tmp_path / "w17", "--config.data.checks=warn"),
               _transfer(leak, tmp_path / "w18", "--config.data.max_cross_split_duplicates=1"),
               _transfer(eval_missing, tmp_path / "w19", "--config.data.checks=off")):
    with pytest.raises(AssertionError, match="a program was compiled"):
      cli(capsys, *args)


# ---------------------------------------------------------------------------
# Class imbalance: balanced sampling, class-weighted loss, per-class accuracy.
# ---------------------------------------------------------------------------
def test_balanced_sampling_draws_classes_evenly_and_resumes_exactly(tmp_path):
  labels = np.repeat([0, 1, 2], [90, 9, 3]).astype(np.int32)
  images = np.arange(len(labels), dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1))
  arrays = data.ArrayDataset(train=(images, labels), eval=(images, labels), num_classes=3,
                             preprocess_train=lambda x, r: x, preprocess_eval=lambda x, r: x,
                             balance="sample")
  drawn = np.concatenate([b["label"] for _, b in zip(range(30), arrays.train_iterator(34, 0))])
  share = np.bincount(drawn, minlength=3) / len(drawn)
  assert np.all(np.abs(share - 1 / 3) < 0.05), share
  again = [b for _, b in zip(range(6), arrays.train_iterator(34, 0, start_step=3))]
  first = [b for _, b in zip(range(9), arrays.train_iterator(34, 0))][3:]
  for a, b in zip(again, first):
    np.testing.assert_array_equal(a["image"], b["image"])
  # The folder source (tf.data): same contract.
  root = write_folder(tmp_path / "imbalanced", {
      "train": {"a": of_class(0, 24), "b": of_class(1, 4)}, "val": {"a": of_class(0, 1, 30),
                                                                   "b": of_class(1, 1, 30)}})
  config = ml_collections.ConfigDict({"name": f"folder:{root}", "balance": "sample",
                                      "preprocess_train": "decode(1)|resize(8)|value_range(0, 1)",
                                      "preprocess_eval": "decode(1)|resize(8)|value_range(0, 1)"})
  folder_ds = data.get_dataset(config)
  assert folder_ds.num_train == 28
  batches = [b for _, b in zip(range(8), folder_ds.train_iterator(14, seed=1))]
  drawn = np.concatenate([b["label"] for b in batches])
  assert 0.3 < drawn.mean() < 0.7, drawn.mean()  # 'b' is 1/7 of the split
  resumed = [b for _, b in zip(range(3), folder_ds.train_iterator(14, seed=1, start_step=5))]
  for a, b in zip(resumed, batches[5:]):
    np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(balance.class_counts(folder_ds), [24, 4])
  with pytest.raises(data.DatasetError, match="config.data.balance='often'"):
    data.get_dataset(dict(config, balance="often"))


def test_class_weighted_loss_and_per_class_accuracy():
  import functools  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from vision_jax.train import steps  # pylint: disable=import-outside-toplevel
  from vision_jax.train.recipes import supervised  # pylint: disable=import-outside-toplevel
  weights = balance.loss_weights(np.array([90, 9, 0, 1]))
  # N / (C_present * n_c): the weights average 1 over the training examples.
  np.testing.assert_allclose(weights, [100 / 270, 100 / 27, 1.0, 100 / 3], rtol=1e-6)
  np.testing.assert_allclose((weights[:2] * [90, 9]).sum() + weights[3], 100, rtol=1e-6)
  labels = jnp.asarray([0, 1, 3])
  soft = jnp.asarray([[0.5, 0.5, 0, 0]])
  hard, mixed = jax.jit(lambda a, b: (steps.example_weights(a, weights),
                                      steps.example_weights(b, weights)))(labels, soft)
  np.testing.assert_allclose(hard, weights[[0, 1, 3]], rtol=1e-6)
  np.testing.assert_allclose(mixed, [(weights[0] + weights[1]) / 2], rtol=1e-6)

  # Through train_step (jitted: one small compile): the class-weighted mean of the losses.
  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(x.reshape((x.shape[0], -1)))

  model, tx, schedule = Linear(), optax.sgd(0.1), optax.constant_schedule(0.1)
  state = jax.jit(functools.partial(steps.create_train_state, model=model, tx=tx,
                                    input_shape=(1, 2, 2, 1), use_ema=False))(jax.random.key(0))
  rng = np.random.default_rng(0)
  mlp_batch = {"image": jnp.asarray(rng.standard_normal((8, 2, 2, 1)), jnp.float32),
               "label": jnp.asarray([0, 0, 0, 0, 0, 1, 1, 2], jnp.int32)}
  class_weights = balance.loss_weights(np.array([5, 2, 1]))

  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule,
                                   num_classes=3, class_weights=class_weights))
  per_example = np.asarray(jax.jit(lambda p, x, y: steps.cross_entropy(
      model.apply({"params": p}, x), y, 3))(state.params, mlp_batch["image"], mlp_batch["label"]))
  weighted = float(step(state, mlp_batch)[1]["loss"])
  assert weighted == pytest.approx(np.mean(per_example * class_weights[[0] * 5 + [1, 1, 2]]),
                                   rel=1e-5)
  assert abs(weighted - float(np.mean(per_example))) > 1e-3

  class Fixed:  # logits = the image itself: predictions are set by the test
    def apply(self, variables, images, train=False):
      del variables, train
      return images

  logits = jnp.asarray(np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2, 0]])
  batch = {"image": logits, "label": jnp.asarray([0, 1, 1, 2, 0, 0]),
           "mask": jnp.asarray([1, 1, 1, 1, 1, 0], bool)}
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=Fixed(), num_classes=3))
  out = eval_fn({}, {}, batch)
  np.testing.assert_array_equal(out["class_count"], [2, 2, 1])
  np.testing.assert_array_equal(out["class_top1"], [1, 1, 1])

  class OneBatch:
    def eval_iterator(self, batch_size, process_index, process_count):
      yield {k: np.asarray(v) for k, v in batch.items()}

  from vision_jax.train import sharding  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(1)
  metrics = supervised.evaluate(eval_fn, {}, {}, OneBatch(), 6, mesh, per_class=True)
  assert metrics["eval_top1"] == pytest.approx(3 / 5)
  assert metrics["eval_balanced_top1"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
  assert metrics["eval_worst_class_top1"] == pytest.approx(0.5)
  assert [metrics[f"eval_top1_class_{i}"] for i in range(3)] == pytest.approx([0.5, 0.5, 1.0])
