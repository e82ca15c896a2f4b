"""Numbers behind the pictures: the confusion matrix and the 2-D projection of features.

`vision_jax.plots` draws them (`plot_confusion_matrix`, `plot_embedding`); what is
counted or projected is computed here, with no drawing library, so that evaluation
code and tools (`vj-evaluate` counts its confusion matrix here) can use it headless:

    from vision_jax.eval import analysis
    matrix = analysis.confusion_matrix(labels, logits.argmax(-1), num_classes=10)
    points = analysis.project_2d(features, "tsne")
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


class AnalysisError(ValueError):
  """The inputs cannot be counted or projected; the message names the input and the fix."""


def confusion_matrix(labels: Iterable[int], predictions: Iterable[int],
                     num_classes: int | None = None) -> np.ndarray:
  """Counts [true class, predicted class] as int64.

  Raises:
    AnalysisError: different lengths, or a class outside [0, num_classes).
  """
  labels = np.asarray(list(labels) if not hasattr(labels, "shape") else labels).reshape(-1)
  predictions = np.asarray(
      list(predictions) if not hasattr(predictions, "shape") else predictions).reshape(-1)
  if labels.shape != predictions.shape:
    raise AnalysisError(f"confusion_matrix: {labels.size} labels but {predictions.size} "
                        "predictions; give one prediction per example.")
  if labels.size and not (np.issubdtype(labels.dtype, np.integer)
                          and np.issubdtype(predictions.dtype, np.integer)):
    raise AnalysisError("confusion_matrix takes integer class indices; pass logits.argmax(-1), "
                        "not logits or probabilities.")
  if num_classes is None:
    num_classes = int(max(labels.max(initial=-1), predictions.max(initial=-1))) + 1
  for what, values in (("label", labels), ("prediction", predictions)):
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
      raise AnalysisError(f"confusion_matrix: {what} {int(bad[0])} is outside "
                          f"[0, {num_classes}); pass the right num_classes.")
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
  return matrix


def project_2d(features: Any, method: str = "pca", seed: int = 0) -> np.ndarray:
  """[N, D] features -> [N, 2] points by PCA or t-SNE (scikit-learn).

  Features are standardised first (zero mean, unit variance per dimension), so
  that no single large feature dominates. t-SNE starts from the PCA points
  (`init='pca'`) with a perplexity that fits small N.
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 3:
    raise AnalysisError(f"project_2d takes [N, D] features with N >= 3; got shape {x.shape}.")
  if not np.isfinite(x).all():
    raise AnalysisError("project_2d: the features contain NaN or Inf.")
  x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
  if method == "pca":
    from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel
    return PCA(n_components=2, random_state=seed).fit_transform(x)
  if method == "tsne":
    # pylint: disable=import-outside-toplevel
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                learning_rate="auto")
    # On a few thousand points OpenMP threads cost more than they save, and on a busy
    # machine they spin: 60 points took 5-24 s with them and 0.2 s on one thread here.
    with threadpool_limits(limits=1 if len(x) <= 5000 else None, user_api="openmp"):
      return tsne.fit_transform(x)
  raise AnalysisError(f"method={method!r}; choose 'pca' or 'tsne'.")
