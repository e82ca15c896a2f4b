"""Input pipelines: tfds (mocked) and folder sources, host sharding, exact resume, eval padding, mixing."""

import logging
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from vision_jax import data
from vision_jax.data import DatasetError, PreprocessError, folder, mix
from vision_jax.data.tfds_source import TfdsSource

IDS = "decode|value_range(0, 255)"  # deterministic: pixel (0, 0) carries an example's id
AUGMENT = "decode|random_crop(6)|flip_lr|value_range(-1, 1)"


def data_config(**fields):
  return ml_collections.ConfigDict(fields)


def id_image(index: int, size: int = 8) -> np.ndarray:
  image = np.zeros((size, size, 3), np.uint8)
  image[..., 0] = index % 256
  image[..., 1] = index // 256
  image[..., 2] = np.arange(size)[None, :] * 20  # some structure for the crops and flips
  return image


def ids_of(images: np.ndarray) -> np.ndarray:
  return (images[:, 0, 0, 0] + 256 * images[:, 0, 0, 1]).round().astype(int)


# ---------------------------------------------------------------------------
# tfds, through tfds.testing.mock_data.
# ---------------------------------------------------------------------------
def write_metadata(root, name, splits):
  """dataset_info.json with the given split sizes, so that the mocked builder knows its splits."""
  builder = tfds.builder(name, data_dir=str(root))
  infos = [tfds.core.SplitInfo(
      name=split, shard_lengths=[n], num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
          dataset_name=name, split=split, filetype_suffix="tfrecord"))
      for split, n in splits.items()]
  builder.info.set_splits(tfds.core.SplitDict(infos))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


def numbered_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **_):
  """A mock that honours split slicing: example i of split s carries id offset(s) + i."""
  del decoders, read_config, shuffle_files
  offsets = {"train": 0, "test": 10_000, "validation": 20_000}
  ids = []
  for inst in tfds.core.splits.AbstractSplit.from_spec(split).to_absolute(self.info.splits):
    end = self.info.splits[inst.splitname].num_examples if inst.to is None else inst.to
    ids += [offsets[inst.splitname] + i for i in range(inst.from_ or 0, end)]
  images = [tf.io.encode_png(id_image(i % 30_000)).numpy() for i in ids]
  return tf.data.Dataset.from_tensor_slices({
      "id": [str(i) for i in ids], "image": images,
      "label": np.asarray(ids, np.int64) % self.info.features["label"].num_classes})


@pytest.fixture
def numbered_cifar(tmp_path):
  write_metadata(tmp_path, "cifar10", {"train": 41, "test": 23})
  with tfds.testing.mock_data(data_dir=str(tmp_path), as_dataset_fn=numbered_as_dataset):
    yield


@pytest.mark.parametrize("name, eval_split, train_pp, eval_pp", [
    ("imagenet2012", "validation", "inception_crop(32)|flip_lr|value_range(-1, 1)",
     "decode|resize_small(36)|central_crop(32)|value_range(-1, 1)"),
    ("cifar10", "test", "decode|random_crop(28)|flip_lr|randaugment(2, 9)|value_range(-1, 1)",
     "decode|central_crop(28)|value_range(-1, 1)"),
])
def test_tfds_mock_pipelines(tmp_path, name, eval_split, train_pp, eval_pp):
  write_metadata(tmp_path, name, {"train": 24, eval_split: 24})
  with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
    ds = data.get_dataset(data_config(name=name, data_dir="/elsewhere", preprocess_train=train_pp,
                                      preprocess_eval=eval_pp))
    assert ds.eval_split == eval_split
    assert (ds.num_train, ds.num_eval) == (24, 24)
    assert ds.num_classes == {"imagenet2012": 1000, "cifar10": 10}[name]
    size = 32 if name == "imagenet2012" else 28
    train = ds.train_iterator(8, seed=0)
    batches = [next(train) for _ in range(4)]  # crosses an epoch boundary (3 steps per epoch)
    for batch in batches:
      assert batch["image"].shape == (8, size, size, 3) and batch["image"].dtype == np.float32
      assert -1 <= batch["image"].min() and batch["image"].max() <= 1
      assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
    resumed = next(ds.train_iterator(8, seed=0, start_step=3))
    np.testing.assert_array_equal(resumed["image"], batches[3]["image"])
    evals = list(ds.eval_iterator(10))
    assert [b["mask"].sum() for b in evals] == [10, 10, 4]
    assert all(b["image"].shape == (10, size, size, 3) for b in evals)


def test_tfds_process_shares_are_disjoint_and_cover_the_split(numbered_cifar):
  source = TfdsSource("cifar10")
  for split, n in (("train", 41), ("test", 23), ("train[:10]+test", 33)):
    for count in (1, 2, 3):
      shares = [[int(x["id"]) for x in source.read(split, p, count, training=False).as_numpy_iterator()]
                for p in range(count)]
      assert [len(s) for s in shares] == source.share_sizes(split, count)
      assert max(map(len, shares)) - min(map(len, shares)) <= split.count("+") + 1
      flat = sorted(i for s in shares for i in s)
      assert len(flat) == n and len(set(flat)) == n, (split, count)


def test_tfds_training_shares_are_disjoint_per_epoch(numbered_cifar):
  ds = data.get_dataset(data_config(name="cifar10", preprocess_train=IDS, preprocess_eval=IDS))
  seen = []
  for p in range(2):
    it = ds.train_iterator(8, seed=1, process_index=p, process_count=2)
    ids = np.concatenate([ids_of(next(it)["image"]) for _ in range(5)])  # 20 // 4 = 5 steps/epoch
    assert len(set(ids)) == 20
    seen.append(set(ids))
  assert not seen[0] & seen[1]


def test_resume_at_any_step_equals_an_uninterrupted_run(numbered_cifar):
  config = data_config(name="cifar10", preprocess_train=AUGMENT, preprocess_eval=IDS,
                       shuffle_buffer=16)
  ds = data.get_dataset(config)
  ids_ds = data.get_dataset(dict(config, preprocess_train=IDS))
  full = ds.train_iterator(8, seed=7)
  reference = [next(full) for _ in range(12)]  # 5 steps per epoch: crosses two boundaries
  for start in (3, 5, 9):
    resumed = ds.train_iterator(8, seed=7, start_step=start)
    for step in range(start, 12):
      batch = next(resumed)
      for key in ("image", "label"):
        np.testing.assert_array_equal(batch[key], reference[step][key], err_msg=f"{start} {step}")
  # Each epoch is a permutation of 40 of the 41 examples, in a new order; seeds matter.
  it = ids_ds.train_iterator(8, seed=7)
  epochs = [np.concatenate([ids_of(next(it)["image"]) for _ in range(5)]) for _ in range(2)]
  assert all(len(set(e)) == 40 for e in epochs) and not np.array_equal(epochs[0], epochs[1])
  other = next(ds.train_iterator(8, seed=8))
  assert not np.array_equal(other["image"], reference[0]["image"])


@pytest.mark.parametrize("process_count, global_batch", [(1, 6), (2, 6), (3, 6), (4, 8)])
def test_eval_counts_every_example_exactly_once(numbered_cifar, process_count, global_batch):
  ds = data.get_dataset(data_config(name="cifar10", preprocess_train=IDS, preprocess_eval=IDS))
  counted, lengths = [], []
  for p in range(process_count):
    batches = list(ds.eval_iterator(global_batch, p, process_count))
    lengths.append(len(batches))
    for b in batches:
      assert b["mask"].dtype == bool and len(b["mask"]) == global_batch // process_count
      assert (b["image"][~b["mask"]] == 0).all()
      counted += list(ids_of(b["image"][b["mask"]]))
  assert len(set(lengths)) == 1, "every process must run the same number of eval steps"
  assert sorted(counted) == list(range(10_000, 10_023))


def test_prepared_tfds_files_are_read_sharded_and_resumed(tmp_path):
  """Real TFRecord shards written in the tfds layout: the reader path that mock_data replaces."""
  builder = tfds.builder("cifar10", data_dir=str(tmp_path))
  os.makedirs(builder.data_dir)
  infos, index = [], 0
  for split, shards in (("train", [20, 21]), ("test", [11, 12])):
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name="cifar10", split=split, filetype_suffix="tfrecord")
    for shard, length in enumerate(shards):
      path = template.sharded_filepath(shard_index=shard, num_shards=len(shards))
      with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for _ in range(length):
          writer.write(builder.info.features.serialize_example(
              {"id": str(index), "image": id_image(index, 32), "label": index % 10}))
          index += 1
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=shards, num_bytes=0,
                                     filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(infos))
  builder.info.write_to_directory(builder.data_dir)

  ds = data.get_dataset(data_config(name="cifar10", data_dir=str(tmp_path), preprocess_eval=IDS,
                                    preprocess_train="decode|random_crop(28)|flip_lr"))
  assert (ds.num_train, ds.num_eval, ds.eval_split) == (41, 23, "test")
  full = ds.train_iterator(8, seed=0)
  reference = [next(full) for _ in range(7)]  # 5 steps per epoch
  resumed = ds.train_iterator(8, seed=0, start_step=4)
  for step in range(4, 7):
    np.testing.assert_array_equal(next(resumed)["image"], reference[step]["image"])
  for count in (1, 2, 3):
    counted = [i for p in range(count) for b in ds.eval_iterator(6, p, count)
               for i in ids_of(b["image"][b["mask"]])]
    assert sorted(counted) == list(range(41, 64))
  shares = [{int(x["id"]) for x in ds.source.read("train", p, 2, training=True, seed=3).as_numpy_iterator()}
            for p in range(2)]
  assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(41))


def test_unprepared_tfds_datasets_say_where_and_how(tmp_path):
  with pytest.raises(DatasetError, match=rf"(?s)not prepared.*{tmp_path}.*tfds build cifar10"):
    data.get_dataset(data_config(name="cifar10", data_dir=str(tmp_path), preprocess_train=IDS,
                                 preprocess_eval=IDS))
  with pytest.raises(DatasetError, match=r"(?s)imagenet2012.*manual download.*ILSVRC2012_img_train"
                                         rf".*{tmp_path}/downloads/manual.*--manual_dir"):
    data.get_dataset(data_config(name="imagenet2012", data_dir=str(tmp_path), preprocess_train=IDS,
                                 preprocess_eval=IDS))
  with pytest.raises(DatasetError, match="Unknown dataset 'cifar_ten'"):
    data.get_dataset(data_config(name="cifar_ten"))


def test_missing_preprocessing_and_bad_strings(numbered_cifar):
  with pytest.raises(DatasetError, match="preprocess_eval is required"):
    data.get_dataset(data_config(name="cifar10", preprocess_train=IDS))
  with pytest.raises(PreprocessError, match="Unknown preprocessing op 'decod'"):
    data.get_dataset(data_config(name="cifar10", preprocess_train="decod", preprocess_eval=IDS))
  ds = data.get_dataset(data_config(name="cifar10", preprocess_train=IDS,
                                    preprocess_eval=IDS + "|onehot(10)"))
  with pytest.raises(DatasetError, match="integer class labels"):
    next(ds.eval_iterator(4))
  ds = data.get_dataset(data_config(name="cifar10", preprocess_train="keep('image', 'label')",
                                    preprocess_eval=IDS))
  with pytest.raises(DatasetError, match="string feature 'image'"):
    next(ds.train_iterator(4, seed=0))


# ---------------------------------------------------------------------------
# Folder source.
# ---------------------------------------------------------------------------
def folder_image(index: int) -> np.ndarray:
  """16x16 grey-level structure whose flat top-left 8x8 block is 5 * index (survives JPEG)."""
  y, x = np.mgrid[0:16, 0:16]
  image = (x * 8 + y * 4) % 200
  image[:8, :8] = 5 * index
  return np.repeat(image[..., None], 3, axis=-1).astype(np.uint8)


def folder_ids(images: np.ndarray) -> np.ndarray:
  return np.round(images[:, 2, 2, 0] / 5).astype(int)


def write_image(path, image, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=95)
  tf.io.write_file(path, encoded)


@pytest.fixture
def image_folder(tmp_path):
  """train: 3 classes, 10 images each, PNG/JPEG, colour and greyscale, plus a corrupt and a
  truncated JPEG; val: 7 images. Ids: train zebra 0-9, ant 10-19, moth 20-29; val zebra 30-32,
  ant 33-35, moth 36."""
  root = tmp_path / "images"
  index = 0
  for split, per_class in (("train", 10), ("val", 3)):
    for label, name in enumerate(["zebra", "ant", "moth"]):  # sorted: ant, moth, zebra
      for i in range(per_class if split == "train" or label < 2 else 1):
        image = folder_image(index)
        if i % 3 == 1:
          write_image(str(root / split / name / f"{i}.jpg"), image, "jpeg")
        elif i % 3 == 2:
          write_image(str(root / split / name / f"{i}.PNG"), image[..., :1], "png")  # greyscale
        else:
          write_image(str(root / split / name / f"{i}.png"), image, "png")
        index += 1
  (root / "train" / "ant" / "notes.txt").write_text("not an image")
  (root / "train" / "ant" / "corrupt.jpg").write_bytes(os.urandom(300))
  good = tf.io.encode_jpeg(np.full((32, 32, 3), 90, np.uint8)).numpy()
  (root / "train" / "moth" / "truncated.jpeg").write_bytes(good[:len(good) // 2])
  return root


def test_folder_source_reads_png_jpeg_colour_grey_and_reports_bad_files(image_folder, caplog):
  config = data_config(name=f"folder:{image_folder}", preprocess_train="decode|value_range(-1,1)",
                       preprocess_eval="decode|value_range(0, 255)")
  with caplog.at_level(logging.WARNING):
    ds = data.get_dataset(config)
  assert ds.source.classes == ["ant", "moth", "zebra"] and ds.num_classes == 3
  assert ds.eval_split == "val" and (ds.num_train, ds.num_eval) == (30, 7)
  bad = [str(image_folder / "train" / "ant" / "corrupt.jpg"),
         str(image_folder / "train" / "moth" / "truncated.jpeg")]
  assert ds.source.skipped_files == bad
  assert all(path in caplog.text for path in bad), caplog.text
  batch = next(ds.train_iterator(30, seed=0))
  assert batch["image"].shape == (30, 16, 16, 3) and batch["image"].dtype == np.float32
  assert sorted(np.bincount(batch["label"])) == [10, 10, 10]
  (evaluation,) = list(ds.eval_iterator(8))
  assert evaluation["mask"].tolist() == [True] * 7 + [False]
  # In order: ant, moth, zebra; file names sorted within a class.
  assert evaluation["label"][:7].tolist() == [0, 0, 0, 1, 2, 2, 2]
  np.testing.assert_array_equal(folder_ids(evaluation["image"][:7]), [33, 34, 35, 36, 30, 31, 32])


def test_folder_file_that_fails_during_training_is_named(image_folder):
  config = data_config(name=f"folder:{image_folder}", preprocess_train="decode|value_range(-1,1)",
                       preprocess_eval="decode|value_range(-1,1)", validate_files="header")
  ds = data.get_dataset(config)
  assert ds.source.skipped_files == [str(image_folder / "train" / "ant" / "corrupt.jpg")]
  with pytest.raises(DatasetError,
                     match=r"(?s)cannot be decoded.*moth/truncated\.jpeg.*validate_files='full'"):
    for _ in ds.train_iterator(31, seed=0):
      pass


def test_folder_shares_and_resume(image_folder):
  config = data_config(name=f"folder:{image_folder}", preprocess_train=IDS, preprocess_eval=IDS)
  ds = data.get_dataset(config)
  ids = []
  for p in range(2):
    it = ds.train_iterator(10, 3, 0, p, 2)
    ids.append(np.concatenate([folder_ids(next(it)["image"]) for _ in range(3)]))
  assert not set(ids[0]) & set(ids[1]) and len(set(ids[0]) | set(ids[1])) == 30
  classes = [np.bincount(next(ds.train_iterator(10, 3, 0, p, 2))["label"], minlength=3) for p in range(2)]
  assert all((c > 0).sum() >= 2 for c in classes), "training shares mix the classes"
  augmented = data.get_dataset(dict(config, preprocess_train=AUGMENT))
  reference = [b for b, _ in zip(augmented.train_iterator(10, 3), range(7))]
  resumed = [b for b, _ in zip(augmented.train_iterator(10, 3, start_step=4), range(3))]
  for a, b in zip(resumed, reference[4:]):
    np.testing.assert_array_equal(a["image"], b["image"])
  counted = [i for p in range(3) for b in ds.eval_iterator(6, p, 3)
             for i in folder_ids(b["image"][b["mask"]])]
  assert sorted(counted) == list(range(30, 37))


def test_folder_layout_errors(tmp_path, image_folder):
  pp = dict(preprocess_train=IDS, preprocess_eval=IDS)
  with pytest.raises(DatasetError, match="does not exist"):
    data.get_dataset(data_config(name=f"folder:{tmp_path / 'nowhere'}", **pp))
  with pytest.raises(DatasetError, match=r"no split folder 'test'; it has \['train', 'val'\]"):
    data.get_dataset(data_config(name=f"folder:{image_folder}", eval_split="test", **pp))
  write_image(str(image_folder / "val" / "wasp" / "a.png"), folder_image(1), "png")
  with pytest.raises(data.DataCheckError, match=r"class folder\(s\) wasp that the training split lacks"):
    data.get_dataset(data_config(name=f"folder:{image_folder}", **pp))
  with pytest.raises(DatasetError, match="validate_files='fast'"):
    data.get_dataset(data_config(name=f"folder:{image_folder}", validate_files="fast", **pp))
  assert folder.find_undecodable([str(image_folder / "train" / "ant" / "corrupt.jpg")])


# ---------------------------------------------------------------------------
# Batch mixing (any source) and the embedded sources.
# ---------------------------------------------------------------------------
def digits_config(**fields):
  return data_config(name="digits", image_size=8, **fields)


def test_mixup_and_cutmix_make_soft_labels_and_resume_exactly():
  plain = data.get_dataset(digits_config())
  for spec in ("mixup(0.4)", "cutmix(1.0)", "mixup_or_cutmix(0.8, 1.0)"):
    ds = data.get_dataset(digits_config(mix=spec))
    assert ds.num_train == plain.num_train and ds.num_classes == 10
    batches = [b for b, _ in zip(ds.train_iterator(16, seed=2), range(4))]
    raw = [b for b, _ in zip(plain.train_iterator(16, seed=2), range(4))]
    for b, r in zip(batches, raw):
      assert b["label"].shape == (16, 10) and b["label"].dtype == np.float32
      np.testing.assert_allclose(b["label"].sum(1), 1.0, rtol=1e-6)
      weight = b["label"][0, r["label"][0]] if r["label"][0] != r["label"][-1] else None
      if weight is not None and spec == "mixup(0.4)":  # image = w * own + (1 - w) * partner
        np.testing.assert_allclose(b["image"][0], weight * r["image"][0] + (1 - weight) * r["image"][-1],
                                   atol=1e-5)
      if weight is not None and spec == "cutmix(1.0)":  # the label weight is the kept area
        own = np.isclose(b["image"][0], r["image"][0]).mean()
        assert own >= weight - 1e-6
    again = next(ds.train_iterator(16, seed=2, start_step=3))
    np.testing.assert_array_equal(again["label"], batches[3]["label"])
    np.testing.assert_array_equal(again["image"], batches[3]["image"])
    assert next(ds.eval_iterator(16))["label"].dtype == np.int32  # evaluation is not mixed


def test_bad_mix_strings():
  with pytest.raises(PreprocessError, match="Unknown batch op 'mixop'.*cutmix, mixup, mixup_or_cutmix"):
    data.get_dataset(digits_config(mix="mixop(0.2)"))
  with pytest.raises(PreprocessError, match="alpha must be a positive number"):
    data.get_dataset(digits_config(mix="mixup(-1)"))
  with pytest.raises(PreprocessError, match="exactly one"):
    data.get_dataset(digits_config(mix="mixup(0.2)|cutmix(1.0)"))
  assert mix.soft_labels(np.array([2]), 3).tolist() == [[0, 0, 1]]


def test_embedded_sources_are_unchanged():
  ds = data.get_dataset(data_config(name="digits", image_size=16, max_shift=2))
  assert isinstance(ds, data.ArrayDataset) and (ds.num_train, ds.num_eval) == (1437, 360)
  np.testing.assert_array_equal(ds.eval[0], data.digits_dataset(image_size=16).eval[0])
  synthetic = data.get_dataset(data_config(name="synthetic", image_size=8, num_classes=5))
  assert next(synthetic.train_iterator(4, 0))["image"].shape == (4, 8, 8, 3)
