"""vision_jax.plots and tools/plot_metrics.py: curves, confusion matrix, image grid, embedding."""

import json
import os

import numpy as np
import pytest

from tests.conftest import tool_module
from vision_jax import plots
from vision_jax.eval import analysis



def _write_run(workdir, records, batch_size=None):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  if batch_size is not None:
    with open(os.path.join(workdir, "environment.json"), "w", encoding="utf-8") as f:
      json.dump({"config": {"batch_size": batch_size}}, f)
  return str(workdir)


def _supervised(steps, eval_every, scale=1.0):
  """Records shaped as the trainer writes them (train_and_evaluate + metrics.Progress)."""
  records = []
  for step in steps:
    records.append({"step": step, "accuracy": 0.1, "grad_norm": 1.0,
                    "learning_rate": 0.1 * step / steps[-1], "loss": scale * 3.0 / step,
                    "steps_per_sec": 5.0, "images_per_sec": 320.0 + step, "eta_seconds": 1.0})
    if step % eval_every == 0:
      records.append({"step": step, "eval_loss": 1.0 / step, "eval_top1": 1 - 1.0 / step,
                      "eval_top5": 1.0, "eval_count": 360.0})
  return records


def _tool():
  return tool_module("plot_metrics")


def _panel(fig, title):
  (ax,) = [a for a in fig.axes if a.get_title() == title]
  return ax


def test_training_curves_one_line_per_run_with_the_written_values(tmp_path):
  a = _write_run(tmp_path / "runs" / "scratch", _supervised([10, 20, 30, 40], eval_every=20))
  b = _write_run(tmp_path / "runs" / "pretrained",
                 _supervised([10, 20, 30], eval_every=10, scale=0.5))
  fig = plots.training_curves([a, b])
  assert [ax.get_title() for ax in fig.axes] == ["train loss", "eval top-1", "learning rate",
                                                  "images / s"]
  for ax in fig.axes:
    assert [line.get_label() for line in ax.lines] == ["scratch", "pretrained"]
  loss = _panel(fig, "train loss").lines
  np.testing.assert_array_equal(loss[0].get_xdata(), [10, 20, 30, 40])
  np.testing.assert_allclose(loss[0].get_ydata(), [0.3, 0.15, 0.1, 0.075])
  np.testing.assert_allclose(loss[1].get_ydata(), [0.15, 0.075, 0.05])
  top1 = _panel(fig, "eval top-1").lines
  np.testing.assert_array_equal(top1[0].get_xdata(), [20, 40])
  np.testing.assert_allclose(top1[1].get_ydata(), [0.9, 0.95, 1 - 1 / 30])
  np.testing.assert_allclose(_panel(fig, "images / s").lines[1].get_ydata(), [330, 340, 350])
  # One colour per run across the panels, and one legend naming the runs.
  assert {ax.lines[0].get_color() for ax in fig.axes} == {loss[0].get_color()}
  assert loss[0].get_color() != loss[1].get_color()
  assert [t.get_text() for t in fig.legends[0].get_texts()] == ["scratch", "pretrained"]


def test_resumed_run_keeps_the_last_value_of_a_repeated_step(tmp_path):
  first = _supervised([10, 20, 30], eval_every=100)
  resumed = [dict(r, loss=9.0) for r in first[1:]]  # steps 20 and 30 logged again after resume
  run = _write_run(tmp_path / "run", first + resumed)
  line = _panel(plots.training_curves(run), "train loss").lines[0]
  np.testing.assert_array_equal(line.get_xdata(), [10, 20, 30])
  np.testing.assert_allclose(line.get_ydata(), [0.3, 9.0, 9.0])


def test_simclr_run_draws_each_eval_metric_and_missing_panels_say_so(tmp_path):
  records = [{"step": 5, "loss": 4.0}, {"step": 10, "loss": 3.0},
             {"step": 10, "knn_top1": 0.7}, {"step": 20, "loss": 2.0},
             {"step": 20, "knn_top1": 0.8, "linear_top1": 0.9}]
  run = _write_run(tmp_path / "simclr", records)
  fig = plots.training_curves(run)
  ax = _panel(fig, "eval top-1")
  assert [line.get_label() for line in ax.lines] == ["simclr: linear_top1", "simclr: knn_top1"]
  np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.7, 0.8])
  for title in ("learning rate", "images / s"):
    empty = _panel(fig, title)
    assert not empty.lines
    assert [t.get_text() for t in empty.texts] == ["not recorded"]


def test_x_axis_in_images_seen_and_epochs(tmp_path):
  run = _write_run(tmp_path / "run", _supervised([10, 20], eval_every=100), batch_size=64)
  fig = plots.training_curves(run, x="examples")
  np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [640, 1280])
  fig = plots.training_curves(run, x="epoch", examples_per_epoch=320)
  np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [2.0, 4.0])
  assert fig.axes[-1].get_xlabel() == "epoch" and fig.axes[0].get_xlabel() == ""  # shared x axis
  with pytest.raises(plots.PlotError, match="examples_per_epoch"):
    plots.training_curves(run, x="epoch")
  with pytest.raises(plots.PlotError, match="choose one of step, examples, epoch"):
    plots.training_curves(run, x="time")
  no_env = _write_run(tmp_path / "no_env", _supervised([10], eval_every=100))
  with pytest.raises(plots.PlotError, match="batch size"):
    plots.training_curves(no_env, x="examples")
  with pytest.raises(plots.PlotError, match="2 names for 1 workdirs"):
    plots.training_curves(run, names=["a", "b"])


def test_run_names_add_parents_until_they_differ(tmp_path):
  assert plots.run_names(["/x/a/seed0", "/x/b/seed0"]) == ["a/seed0", "b/seed0"]
  assert plots.run_names(["/x/a", "/y/b/"]) == ["a", "b"]


def test_read_metrics_errors_name_the_problem(tmp_path):
  from vision_jax.train import metrics  # the reader lives next to its writer
  with pytest.raises(metrics.MetricsFileError, match="does not exist"):
    metrics.read_metrics(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(metrics.MetricsFileError, match="has no metrics.jsonl"):
    metrics.read_metrics(str(tmp_path / "empty"))
  (tmp_path / "empty" / "metrics.jsonl").write_text("\n")
  with pytest.raises(metrics.MetricsFileError, match="is empty"):
    metrics.read_metrics(str(tmp_path / "empty"))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n[1, 2]\n{"step": 3, "loss": 1}\n')
  with pytest.raises(metrics.MetricsFileError, match="line 2 is not a metrics record"):
    metrics.read_metrics(str(bad))
  # A last line cut short by a killed run is dropped, not an error.
  (bad / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n{"step": 2, "lo')
  assert metrics.read_metrics(str(bad)) == [{"step": 1, "loss": 2}]


def test_plot_metrics_cli_writes_a_png_and_refuses_to_overwrite(tmp_path, capsys):
  from PIL import Image
  a = _write_run(tmp_path / "a", _supervised([10, 20], eval_every=10))
  b = _write_run(tmp_path / "b", _supervised([10, 20], eval_every=10))
  out = str(tmp_path / "plots" / "curves.png")
  tool = _tool()
  assert tool.main([a, b, "--out", out, "--names", "first", "second", "--dpi", "50"]) == 0
  with Image.open(out) as image:
    assert image.format == "PNG"
    assert image.size == (500, 350)  # 10 x 7 inches at 50 dpi
  assert tool.main([a, "--out", out]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  assert tool.main([a, "--out", out, "--overwrite"]) == 0
  # A directory gets curves.png; a suffix the tool cannot write is refused before any drawing.
  assert tool.main([a, "--out", str(tmp_path / "figures") + "/", "--dpi", "20"]) == 0
  assert os.listdir(tmp_path / "figures") == ["curves.png"]
  assert tool.main([a, "--out", str(tmp_path / "curves.pdf")]) == 2
  assert "writes .png files, not '.pdf'" in capsys.readouterr().err
  assert not (tmp_path / "curves.pdf").exists()


def test_plot_metrics_cli_on_a_workdir_without_metrics(tmp_path, run_tool):
  (tmp_path / "not_a_run").mkdir()
  result = run_tool("plot_metrics", str(tmp_path / "not_a_run"), "--out", str(tmp_path / "c.png"))
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and "has no metrics.jsonl" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "c.png").exists()


def test_confusion_matrix_counts_match_scikit_learn():
  from sklearn.metrics import confusion_matrix as sk_confusion
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 200)
  predictions = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 5, 200))
  matrix = analysis.confusion_matrix(labels, predictions, num_classes=6)
  assert matrix.shape == (6, 6) and matrix.dtype == np.int64
  np.testing.assert_array_equal(matrix, sk_confusion(labels, predictions, labels=range(6)))
  assert matrix.sum() == 200 and matrix[5].sum() == 0
  np.testing.assert_array_equal(analysis.confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2]),
                                [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def test_confusion_matrix_errors():
  with pytest.raises(analysis.AnalysisError, match="3 labels but 2 predictions"):
    analysis.confusion_matrix([0, 1, 2], [0, 1])
  with pytest.raises(analysis.AnalysisError, match="prediction 4 is outside"):
    analysis.confusion_matrix([0, 1], [0, 4], num_classes=3)
  with pytest.raises(analysis.AnalysisError, match="argmax"):
    analysis.confusion_matrix([0, 1], np.array([0.2, 0.9]))


def test_plot_confusion_matrix_writes_the_counts_and_the_accuracy(tmp_path):
  matrix = np.array([[5, 1, 0], [0, 3, 2], [0, 0, 4]])
  fig = plots.plot_confusion_matrix(matrix, ["cat", "dog", "fox"])
  ax = fig.axes[0]
  cells = {(int(round(t.get_position()[1])), int(round(t.get_position()[0]))): t.get_text()
           for t in ax.texts}
  assert cells == {(0, 0): "5", (0, 1): "1", (1, 1): "3", (1, 2): "2", (2, 2): "4"}
  assert ax.get_title() == "12/15 correct (80.0%)"
  assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "fox"]
  fig = plots.plot_confusion_matrix(matrix, normalize=True)
  assert "0.60" in [t.get_text() for t in fig.axes[0].texts]  # 3 of the 5 dogs
  path = plots.save_figure(fig, str(tmp_path / "sub" / "confusion.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(plots.PlotError, match="2 class names for a 3x3"):
    plots.plot_confusion_matrix(matrix, ["a", "b"])


def test_image_grid_shows_each_image_with_its_title():
  images = np.linspace(-1, 1, 5 * 8 * 8).reshape(5, 8, 8, 1).astype(np.float32)
  fig = plots.image_grid(images, titles=[f"t{i}" for i in range(5)],
                         title_colors=["green", "red", "green", "green", "red"],
                         columns=3, mean=[0.5], std=[0.5])
  shown = [ax for ax in fig.axes if ax.images]
  assert len(fig.axes) == 6 and len(shown) == 5
  assert [ax.get_title() for ax in shown] == ["t0", "t1", "t2", "t3", "t4"]
  first = shown[0].images[0].get_array()
  assert first.shape == (8, 8, 3) and first.dtype == np.uint8
  last = shown[4].images[0].get_array()
  assert first[0, 0, 0] == 0 and last[-1, -1, 0] == 255  # -1 -> 0 and 1 -> 255
  with pytest.raises(plots.PlotError, match="2 titles for 5 images"):
    plots.image_grid(images, titles=["a", "b"])
  with pytest.raises(plots.PlotError, match=r"\[N, H, W\]"):
    plots.image_grid(np.zeros((2, 4, 4, 5)))


def _clusters(n_per_class=20, classes=3, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 6, (classes, dim))
  labels = np.repeat(np.arange(classes), n_per_class)
  return centres[labels] + rng.normal(0, 1, (len(labels), dim)), labels


def _nearest_centroid_accuracy(points, labels):
  centroids = np.stack([points[labels == c].mean(0) for c in np.unique(labels)])
  predicted = np.argmin(((points[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  return float(np.mean(predicted == labels))


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_project_2d_keeps_separated_classes_apart(method):
  features, labels = _clusters()
  points = analysis.project_2d(features, method)
  assert points.shape == (60, 2)
  assert _nearest_centroid_accuracy(points, labels) == 1.0
  if method == "pca":  # the first component carries the most variance
    assert points[:, 0].var() > points[:, 1].var()


def test_project_2d_and_embedding_errors():
  with pytest.raises(analysis.AnalysisError, match="choose 'pca' or 'tsne'"):
    analysis.project_2d(np.zeros((5, 3)), "umap")
  with pytest.raises(analysis.AnalysisError, match="NaN or Inf"):
    analysis.project_2d(np.full((5, 3), np.nan))
  with pytest.raises(plots.PlotError, match="5 feature rows but 4 labels"):
    plots.plot_embedding(np.zeros((5, 3)), [0, 1, 0, 1])


def test_plot_embedding_one_colour_per_class():
  features, labels = _clusters(n_per_class=10, classes=4)
  fig = plots.plot_embedding(features, labels, class_names=["a", "b", "c", "d"], title="toy")
  ax = fig.axes[0]
  assert [len(c.get_offsets()) for c in ax.collections] == [10, 10, 10, 10]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c", "d"]
  colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections}
  assert len(colours) == 4
  assert ax.get_title() == "toy (PCA)"
