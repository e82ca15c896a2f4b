"""vision_jax.output_paths: the one naming rule of the tools' output options."""

import os

import pytest

from vision_jax import output_paths


def test_a_name_with_a_suffix_is_a_file_and_a_slash_or_directory_is_a_directory(tmp_path):
  existing = tmp_path / "existing.png"  # a directory whose name looks like a file
  existing.mkdir()
  assert not output_paths.names_a_directory(str(tmp_path / "a.png"))
  assert output_paths.names_a_directory(str(tmp_path / "maps") + "/")
  assert output_paths.names_a_directory(str(tmp_path / "maps"))  # no suffix, not there yet
  assert output_paths.names_a_directory(str(existing))
  assert output_paths.single_file(str(tmp_path / "c.png"), "confusion.png") == str(
      tmp_path / "c.png")
  assert output_paths.single_file(str(existing), "confusion.png") == str(
      existing / "confusion.png")
  with pytest.raises(output_paths.OutputError, match=r"--confusion .*c\.jpg: the tool writes "
                     r"\.png files, not '\.jpg'; name a \.png file, or a directory"):
    output_paths.single_file(str(tmp_path / "c.jpg"), "confusion.png", option="--confusion")
  plain = tmp_path / "plain"  # an existing file without a suffix is not a directory
  plain.write_text("x")
  with pytest.raises(output_paths.OutputError, match="a file without a suffix"):
    output_paths.single_file(str(plain), "curves.png")


def test_one_input_may_take_a_file_name_several_need_a_directory(tmp_path):
  paths, to_directory = output_paths.per_input_files(str(tmp_path / "x.png"), ["a_gc.png"])
  assert paths == [str(tmp_path / "x.png")] and not to_directory
  paths, to_directory = output_paths.per_input_files(str(tmp_path / "out"), ["a.png", "b.png"])
  assert paths == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "b.png")]
  assert to_directory
  with pytest.raises(output_paths.OutputError,
                     match=r"names one file, but 2 images were given; give a directory "
                           r"\(e\.g\. --out .*/x/\)"):
    output_paths.per_input_files(str(tmp_path / "x.png"), ["a.png", "b.png"])


def test_input_names_stay_distinct_and_readable():
  assert output_paths.input_names(["d/cat.jpg", "d/dog.png"], "_gc.png") == [
      "cat_gc.png", "dog_gc.png"]
  assert output_paths.input_names(["val/cat/1.jpg", "val/dog/1.jpg"], ".png") == [
      "cat_1.png", "dog_1.png"]
  assert output_paths.input_names(["d/cat.jpg", "d/cat.png"], ".png") == ["cat.png", "cat-2.png"]
  assert output_paths.input_names([], ".png") == []


def test_refuse_overwrite_names_the_file_and_prepare_makes_its_folder(tmp_path):
  (tmp_path / "a.png").write_bytes(b"")
  output_paths.refuse_overwrite([None, str(tmp_path / "b.png")], overwrite=False)
  with pytest.raises(FileExistsError, match=r"a\.png exists; pass --overwrite"):
    output_paths.refuse_overwrite([str(tmp_path / "b.png"), str(tmp_path / "a.png")], False)
  output_paths.refuse_overwrite([str(tmp_path / "a.png")], overwrite=True)
  target = output_paths.prepare(str(tmp_path / "deep" / "er" / "c.png"))
  assert os.path.isdir(tmp_path / "deep" / "er") and target.endswith("c.png")
