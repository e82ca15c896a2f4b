"""Pictures instead of log lines: training curves, confusion matrix, image grid, 2-D embedding.

This module only draws. The numbers behind the pictures are computed elsewhere:
the confusion matrix and the 2-D projection in `vision_jax.eval.analysis`, the
metrics of a run by `vision_jax.train.metrics`.

Every function builds and returns a `matplotlib.figure.Figure` drawn with the
Agg canvas. No pyplot state is touched, so this works headless (CI, a TPU VM
over SSH) and inside notebooks alike: a notebook shows the returned figure when
it is a cell's last expression, and `save_figure(fig, "x.png")` writes a PNG.

    from vision_jax import plots
    fig = plots.training_curves(["/tmp/digits", "/tmp/digits_seed1"])
    plots.save_figure(fig, "curves.png")

`tools/plot_metrics.py` is the command-line front of `training_curves`.

Training curves read `WORKDIR/metrics.jsonl` through `train.metrics.read_metrics`,
next to the writer (`train.metrics.MetricWriter`) that appends one JSON object to
it per logged step and per evaluation: `{"step": 100, "loss": ..., "learning_rate": ...,
"images_per_sec": ...}` and `{"step": 200, "eval_top1": ...}`. A resumed run
appends to the same file and may log a step again; the last value written for a
step wins.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from vision_jax.eval import analysis
from vision_jax.train import metrics as metrics_lib


class PlotError(ValueError):
  """A plot cannot be drawn from what it was given; the message names the input and the fix."""


# (panel title, metric keys in order of preference). A run contributes one line
# per key of a panel that it recorded.
CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train loss", ("loss",)),
    ("eval top-1", ("eval_top1", "linear_top1", "knn_top1")),
    ("learning rate", ("learning_rate",)),
    ("images / s", ("images_per_sec",)),
)
X_AXES = ("step", "examples", "epoch")


# ---------------------------------------------------------------------------
# Reading runs.
# ---------------------------------------------------------------------------
def metric_series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one metric, sorted by step; a step logged twice keeps its last value."""
  by_step: dict[int, float] = {}
  for record in records:
    if key in record and record[key] is not None:
      by_step[int(record["step"])] = float(record[key])
  steps = np.array(sorted(by_step), np.int64)
  return steps, np.array([by_step[s] for s in steps], np.float64)


def run_batch_size(workdir: str) -> int | None:
  """The global batch size of a run, from its environment.json (None when not recorded)."""
  from vision_jax.environment import read_environment  # pylint: disable=import-outside-toplevel
  try:
    return int(read_environment(workdir)["config"]["batch_size"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short legend names: the last path component, with parents added until they differ."""
  parts = [os.path.normpath(os.path.abspath(w)).split(os.sep) for w in workdirs]
  depth = 1
  while True:
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
      return names
    depth += 1


# ---------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------
def new_figure(width: float, height: float, dpi: int = 80):
  """A Figure on the Agg canvas, outside pyplot (no global state, no display needed)."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def save_figure(fig: Any, path: str, dpi: int | None = None) -> str:
  """Writes `fig` as a PNG (parent folders are created); returns the path."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=dpi or fig.dpi, format="png")
  return path


def training_curves(workdirs: str | Sequence[str], names: Sequence[str] | None = None,
                    x: str = "step", examples_per_epoch: int | None = None,
                    panels: Sequence[tuple[str, Sequence[str]]] = CURVE_PANELS,
                    title: str | None = None, dpi: int = 80):
  """Training loss, eval top-1, learning rate and images/s of one or more runs.

  One panel per entry of `panels`, one line per run (and per metric key of the
  panel that the run recorded: a SimCLR run has knn_top1 at every evaluation and
  linear_top1 at the end), the run's name in the legend, one colour per run
  across the panels. A panel that no run recorded says so.

  Args:
    workdirs: training run directories (each with a metrics.jsonl).
    names: legend names, one per workdir (default: the directories' names).
    x: 'step', 'examples' (images seen: step x the run's batch size, read from
      its environment.json) or 'epoch' (examples / `examples_per_epoch`).
    examples_per_epoch: the training split's size, needed for x='epoch'.
    panels: (title, metric keys) of each panel; see CURVE_PANELS.
    title: figure title.
    dpi: figure resolution.

  Returns:
    The Figure, one Axes per panel.

  Raises:
    PlotError: a workdir without metrics, a bad `x`, names that do not match.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  workdirs = [os.fspath(w) for w in workdirs]
  if not workdirs:
    raise PlotError("training_curves needs at least one workdir.")
  if x not in X_AXES:
    raise PlotError(f"x={x!r}; choose one of {', '.join(X_AXES)}.")
  if x == "epoch" and not (examples_per_epoch and examples_per_epoch > 0):
    raise PlotError("x='epoch' needs examples_per_epoch (the size of the training split, "
                    "e.g. 1437 for the digits); or plot against x='step' or 'examples'.")
  if names is not None and len(names) != len(workdirs):
    raise PlotError(f"{len(names)} names for {len(workdirs)} workdirs; give one name per run.")
  names = list(names) if names is not None else run_names(workdirs)
  runs = []
  for workdir in workdirs:
    records = metrics_lib.read_metrics(workdir)
    scale = 1.0
    if x != "step":
      batch = run_batch_size(workdir)
      if batch is None:
        raise PlotError(f"{workdir}/environment.json does not give the run's batch size, "
                        f"which x={x!r} needs; plot against x='step'.")
      scale = batch / (examples_per_epoch if x == "epoch" else 1)
    runs.append((records, scale))

  columns = 2 if len(panels) > 1 else 1
  rows = math.ceil(len(panels) / columns)
  fig = new_figure(5.0 * columns, 3.2 * rows + 0.6, dpi=dpi)
  # One x axis for all panels: an evaluation logged only at the end sits at the right edge.
  axes = fig.subplots(rows, columns, squeeze=False, sharex=True).ravel()
  for extra in axes[len(panels):]:
    fig.delaxes(extra)
  colours = [f"C{i % 10}" for i in range(len(runs))]
  legend: dict[str, Any] = {}
  x_label = {"step": "step", "examples": "images seen",
             "epoch": "epoch"}[x]
  for index, (ax, (panel_title, keys)) in enumerate(zip(axes, panels)):
    drawn = 0
    for (records, scale), name, colour in zip(runs, names, colours):
      present = [k for k in keys if any(k in r for r in records)]
      for k_index, key in enumerate(present):
        steps, values = metric_series(records, key)
        style = {"linestyle": ("-", "--", ":")[k_index % 3]}
        if len(steps) < 30:
          style["marker"] = "o"
          style["markersize"] = 3
        label = name if len(present) == 1 else f"{name}: {key}"
        (line,) = ax.plot(steps * scale, values, color=colour, label=label, **style)
        legend.setdefault(label, line)
        drawn += 1
    ax.set_title(panel_title, fontsize=10)
    if index + columns >= len(panels):  # the lowest panel of its column
      ax.set_xlabel(x_label, fontsize=9)
      ax.xaxis.set_tick_params(labelbottom=True)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    if not drawn:
      ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes,
              color="grey")
  legend_rows = math.ceil(len(legend) / 4)
  fig.legend(list(legend.values()), list(legend.keys()), loc="lower center",
             ncol=min(len(legend), 4) or 1, fontsize=8, frameon=False)
  if title:
    fig.suptitle(title, fontsize=11)
  height = fig.get_figheight()
  fig.tight_layout(rect=(0, 0.3 * legend_rows / height, 1, 1 - (0.3 / height if title else 0)))
  return fig


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str] | None = None,
                          normalize: bool = False, title: str | None = None, dpi: int = 80):
  """The confusion matrix as a heat map (rows: true class, columns: predicted).

  Each cell shows its count (or, with `normalize`, the share of its row) when
  there are at most 30 classes; the title gives the overall accuracy.
  """
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise PlotError(f"a confusion matrix is square; got shape {matrix.shape}.")
  n = matrix.shape[0]
  names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
  if len(names) != n:
    raise PlotError(f"{len(names)} class names for a {n}x{n} confusion matrix.")
  shown = matrix.astype(np.float64)
  if normalize:
    shown = shown / np.maximum(shown.sum(axis=1, keepdims=True), 1)
  side = min(2.5 + 0.45 * n, 16)
  fig = new_figure(side + 0.8, side, dpi=dpi)
  ax = fig.add_subplot()
  image = ax.imshow(shown, cmap="Blues", vmin=0)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  if n <= 30:
    ax.set_xticks(range(n), names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    top = shown.max() or 1
    for i in range(n):
      for j in range(n):
        if matrix[i, j]:
          text = f"{shown[i, j]:.2f}" if normalize else str(int(matrix[i, j]))
          ax.text(j, i, text, ha="center", va="center", fontsize=7,
                  color="white" if shown[i, j] > top / 2 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  total = matrix.sum()
  accuracy = np.trace(matrix) / total if total else float("nan")
  ax.set_title(f"{title + ': ' if title else ''}{int(np.trace(matrix))}/{int(total)} correct "
               f"({100 * accuracy:.1f}%)", fontsize=10)
  fig.tight_layout()
  return fig


def image_grid(images: Any, titles: Sequence[str] | None = None,
               title_colors: Sequence[str] | None = None, columns: int = 8,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               cell_size: float = 1.3, title: str | None = None, dpi: int = 80):
  """Images in a grid, each with its title (a label, "true 3 / predicted 8", ...).

  Args:
    images: [N, H, W, C] or [N, H, W]: uint8, floats in [0, 1], or model inputs
      normalised with `mean` / `std` (the digits are in [-1, 1]: mean 0.5, std 0.5).
    titles: one short string per image.
    title_colors: one matplotlib colour per title (e.g. green right, red wrong).
    columns: images per row.
    mean: per-channel mean the images were normalised with.
    std: per-channel std.
    cell_size: inches per image.
    title: figure title.
    dpi: figure resolution.
  """
  from vision_jax.explain.overlay import to_uint8_image  # pylint: disable=import-outside-toplevel
  images = np.asarray(images)
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
    raise PlotError(f"image_grid takes [N, H, W] or [N, H, W, 1 or 3] images; got shape "
                    f"{images.shape}.")
  n = len(images)
  if n == 0:
    raise PlotError("image_grid got no images.")
  for what, values in (("titles", titles), ("title_colors", title_colors)):
    if values is not None and len(values) != n:
      raise PlotError(f"{len(values)} {what} for {n} images; give one per image.")
  columns = max(1, min(columns, n))
  rows = math.ceil(n / columns)
  fig = new_figure(cell_size * columns, (cell_size + 0.25) * rows + (0.4 if title else 0), dpi=dpi)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for i, ax in enumerate(axes):
    ax.axis("off")
    if i >= n:
      continue
    ax.imshow(to_uint8_image(images[i], mean, std), interpolation="nearest")
    if titles is not None:
      ax.set_title(titles[i], fontsize=8,
                   color=title_colors[i] if title_colors is not None else "black")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def plot_embedding(features: Any, labels: Any, class_names: Sequence[str] | None = None,
                   method: str = "pca", title: str | None = None, seed: int = 0,
                   ax: Any = None, dpi: int = 80):
  """A 2-D map of features (PCA or t-SNE), one colour per class.

  Points of one class that cluster apart from the others are what a linear probe
  or a kNN can separate. `features` may already be [N, 2] points with
  method='none'. With `ax`, draws into that Axes and returns its Figure.
  """
  labels = np.asarray(labels).reshape(-1)
  features = np.asarray(features)
  if len(labels) != len(features):
    raise PlotError(f"{len(features)} feature rows but {len(labels)} labels.")
  points = features if method == "none" else analysis.project_2d(features, method, seed)
  if points.ndim != 2 or points.shape[1] != 2:
    raise PlotError(f"method='none' takes [N, 2] points; got shape {points.shape}.")
  classes = np.unique(labels)
  if ax is None:
    fig = new_figure(5.6, 4.6, dpi=dpi)
    ax = fig.add_subplot()
  else:
    fig = ax.figure
  palette = "tab10" if len(classes) <= 10 else "tab20"
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  cmap = colormaps[palette]
  for i, c in enumerate(classes):
    name = class_names[int(c)] if class_names is not None else str(c)
    keep = labels == c
    ax.scatter(points[keep, 0], points[keep, 1], s=6, color=cmap(i % cmap.N), label=name,
               alpha=0.8, linewidths=0)
  ax.set_xticks([])
  ax.set_yticks([])
  method_name = {"pca": "PCA", "tsne": "t-SNE", "none": "2-D"}.get(method, method)
  ax.set_title(f"{title + ' ' if title else ''}({method_name})", fontsize=10)
  if len(classes) <= 20:
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
  fig.tight_layout()
  return fig
