"""The shared probes (vision_jax.eval.probes) against scikit-learn, and tools/evaluate.py --probe.

Features are the embedded digits' raw 8x8 pixels (64 dims), so that scikit-learn
solves the same problems within a second.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest

from vision_jax.data.digits import load_digits
from vision_jax.eval import probes

sklearn_neighbors = pytest.importorskip("sklearn.neighbors")
sklearn_linear = pytest.importorskip("sklearn.linear_model")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _digits():
  """(train x, train y, test x, test y): raw pixels scaled to [0, 1], as float32 rows."""
  (xtr, ytr), (xte, yte) = load_digits("train"), load_digits("test")
  flat = lambda x: (x.reshape(len(x), -1) / 16.0).astype(np.float32)
  return flat(xtr), ytr, flat(xte), yte


def test_knn_matches_scikit_learn_weighted_votes():
  xtr, ytr, xte, yte = _digits()
  k, t = 20, 0.07
  ours = probes.knn_scores(xtr, ytr, xte, k=k, temperature=t, chunk_size=128)
  # DINO's weights exp(sim / T) are exp((1 - cosine distance) / T) for scikit-learn.
  ref = sklearn_neighbors.KNeighborsClassifier(
      n_neighbors=k, metric="cosine", algorithm="brute",
      weights=lambda d: np.exp((1.0 - d) / t)).fit(xtr, ytr).predict_proba(xte)
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  accuracy = probes.knn_accuracy(xtr, ytr, xte, yte)  # the defaults are DINO's k=20, T=0.07
  assert accuracy == pytest.approx(float(np.mean(ref.argmax(1) == yte)))
  assert accuracy > 0.9  # raw-pixel digits: a k-NN gets most right


def test_linear_probe_matches_scikit_learn_logistic_regression():
  xtr, ytr, xte, yte = _digits()
  xtr, ytr = xtr[:400], ytr[:400]
  l2 = 1e-2
  xs, xt = (np.asarray(a) for a in probes.standardize(xtr, xte))
  params = probes.fit_logistic(xs, ytr, num_classes=10, l2=l2)
  ref = sklearn_linear.LogisticRegression(C=1.0 / (l2 * len(xs)), tol=1e-10,
                                          max_iter=5000).fit(xs.astype(np.float64), ytr)
  kernel = np.asarray(params["kernel"])
  assert np.max(np.abs(kernel - ref.coef_.T)) < 1e-3 * np.max(np.abs(ref.coef_))
  logits = xt @ kernel + np.asarray(params["bias"])
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  np.testing.assert_allclose(probs, ref.predict_proba(xt.astype(np.float64)), atol=1e-4)
  accuracy = probes.linear_probe(xtr, ytr, xte, yte, l2=l2)
  assert accuracy == pytest.approx(float(np.mean(ref.predict(xt) == yte)), abs=1 / len(yte))
  # MAE's BatchNorm-without-affine head is the standardisation: with train statistics the
  # standardised training features have mean 0 and variance var / (var + eps), eps = 1e-6.
  var = xtr.astype(np.float64).var(0)
  np.testing.assert_allclose(xs.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(xs.var(0), var / (var + probes.BN_EPS), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("rows", [10, 400])  # fewer rows than dims (dual system), and more
def test_ridge_matches_scikit_learn_ridge_classifier(rows):
  xtr, ytr, xte, _ = _digits()
  x, y = xtr[:rows], ytr[:rows]
  l2 = 3.0
  params = probes.fit_ridge(x, y, num_classes=10, l2=l2)
  ref = sklearn_linear.RidgeClassifier(alpha=l2).fit(x.astype(np.float64), y)
  ours = xte @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  np.testing.assert_allclose(ours, ref.decision_function(xte.astype(np.float64)), atol=1e-4)


def test_fewshot_is_ridge_on_the_drawn_shots():
  xtr, ytr, xte, yte = _digits()
  out = probes.fewshot_accuracy(xtr, ytr, xte, yte, shots=(1, 5), seeds=2, l2=1.0)
  assert set(out) == {"fewshot_1shot", "fewshot_1shot_std", "fewshot_5shot",
                      "fewshot_5shot_std"}
  manual = []
  for seed in range(2):
    rows = probes.fewshot_indices(ytr, 5, seed, 10)
    assert len(rows) == 50 and set(np.bincount(ytr[rows])) == {5}
    model = sklearn_linear.RidgeClassifier(alpha=1.0).fit(xtr[rows].astype(np.float64), ytr[rows])
    manual.append(np.mean(model.predict(xte.astype(np.float64)) == yte))
  assert out["fewshot_5shot"] == pytest.approx(np.mean(manual), abs=1e-9)
  assert out["fewshot_5shot_std"] == pytest.approx(np.std(manual), abs=1e-9)
  assert 0.1 < out["fewshot_1shot"] < out["fewshot_5shot"]  # more shots help
  with pytest.raises(probes.ProbeError, match="fewer than 500 shots"):
    probes.fewshot_accuracy(xtr, ytr, xte, yte, shots=(500,))


def test_probe_metrics_and_bad_input():
  xtr, ytr, xte, yte = _digits()
  out = probes.probe_metrics((xtr, ytr), (xte, yte), ("knn", "fewshot"),
                             fewshot={"shots": (1,), "seeds": 1})
  assert set(out) == {"probe_count", "knn_top1", "fewshot_1shot", "fewshot_1shot_std"}
  assert out["probe_count"] == len(yte)
  # A recipe's eval: k-NN at every eval, the chosen set at the final one.
  every = probes.probes_from_config((xtr, ytr), (xte, yte), None, 10, final=False)
  assert set(every) == {"probe_count", "knn_top1"} and every["knn_top1"] == out["knn_top1"]
  final = probes.probes_from_config((xtr, ytr), (xte, yte),
                                    {"final": ["fewshot"], "fewshot": {"shots": (1,), "seeds": 1}},
                                    10, final=True)
  assert final["fewshot_1shot"] == out["fewshot_1shot"]
  with pytest.raises(probes.ProbeError, match="unknown key"):
    probes.probes_from_config((xtr, ytr), (xte, yte), {"evry": ["knn"]}, 10, final=False)
  with pytest.raises(probes.ProbeError, match="choose from"):
    probes.probe_metrics((xtr, ytr), (xte, yte), ("svm",))
  with pytest.raises(probes.ProbeError, match="same dims"):
    probes.knn_accuracy(xtr, ytr, xte[:, :10], yte)
  with pytest.raises(probes.ProbeError, match="one integer label per row"):
    probes.linear_probe(xtr, ytr[:5], xte, yte)
  bad = xte.copy()
  bad[0, 0] = np.nan
  with pytest.raises(probes.ProbeError, match="NaN"):
    probes.knn_accuracy(xtr, ytr, bad, yte)


def test_extract_features_pads_the_tail_once():
  calls = []

  def feature_fn(x):
    calls.append(x.shape)
    return x.reshape(len(x), -1)[:, :3] * 2

  images = np.arange(10 * 2 * 2 * 1, dtype=np.float32).reshape(10, 2, 2, 1)
  out = probes.extract_features(feature_fn, images, batch_size=4)
  np.testing.assert_array_equal(out, images.reshape(10, -1)[:, :3] * 2)
  assert calls == [(4, 2, 2, 1)] * 3  # the last batch of 2 is padded to the compiled shape


def test_evaluate_tool_probe_on_a_tiny_model(tmp_path, capsys):
  """tools/evaluate.py --probe, in-process, on converted weights of a tiny ViT (random init)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io  # pylint: disable=import-outside-toplevel
  overrides = {"img_size": 32, "depth": 1, "width": 32, "mlp_dim": 64, "num_heads": 2}
  module = models.create_model("vit_tiny_patch16_224", num_classes=10, **overrides)
  # Random weights drawn in numpy: compiling flax's initialisers costs seconds on a CPU.
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (1.0 if path[-1].key == "scale" else 0.0)
      + 0.1 * rng.standard_normal(s.shape).astype(np.float32), shapes)
  io.save_converted(str(tmp_path / "w"), variables, "vit_tiny_patch16_224", 10, overrides)
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  try:
    import evaluate  # pylint: disable=import-outside-toplevel
    out_json = tmp_path / "probe.json"
    code = evaluate.main(["--weights", str(tmp_path / "w"), "--data", "digits", "--probe", "knn",
                          "--probe", "fewshot", "--fewshot-shots", "5", "--batch-size", "512",
                          "--output", str(out_json)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    import json  # pylint: disable=import-outside-toplevel
    metrics = json.loads(out_json.read_text())
    assert metrics["probe_count"] == len(load_digits("test")[1])
    # A random ViT's features still carry the digit: far above chance (0.1).
    assert metrics["knn_top1"] > 0.3 and metrics["fewshot_5shot"] > 0.2
    assert "knn top-1" in printed.out and "fewshot 5-shot" in printed.out
    code = evaluate.main(["--weights", str(tmp_path / "w"), "--data", "digits", "--probe",
                          "fewshot", "--fewshot-shots", "1,x"])
    assert code == 2 and "error: --fewshot-shots" in capsys.readouterr().err
    assert evaluate.PROBE_CHOICES == probes.PROBES
  finally:
    sys.path.remove(os.path.join(ROOT, "tools"))
