"""vision_jax.explain.metrics against Quantus (PyTorch), and the sanity checks' similarity scores.

The reference model is a two-convolution network written twice, in flax and in
torch, with the same random weights; the maps are fixed random arrays (no ties,
so both sides sort pixels the same way). Quantus draws its random subsets and
noise with numpy's global generator: the tests seed it, draw the same numbers
in the same order, and hand them to our functions explicitly. ROAD is compared
with its noise set to 0 (the imputation itself is deterministic).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vision_jax import explain  # noqa: E402
from vision_jax.explain import metrics, sanity  # noqa: E402
from tests import jitted

pytestmark = pytest.mark.xdist_group("explain_metrics")

SIZE = 12
BATCH = 6


class TinyNet(nn.Module):
  """Two 3x3 convolutions, global mean, a linear head: small enough to run many times."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3), padding=1, name="conv1")(x))
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding=1, name="conv2")(x))
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def _torch_twin(variables):
  params = jax.tree.map(lambda a: torch.from_numpy(np.asarray(a).copy()), variables["params"])
  conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
  conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
  head = torch.nn.Linear(8, 10)
  with torch.no_grad():
    for layer, name in ((conv1, "conv1"), (conv2, "conv2")):
      layer.weight.copy_(params[name]["kernel"].permute(3, 2, 0, 1))
      layer.bias.copy_(params[name]["bias"])
    head.weight.copy_(params["head"]["kernel"].T)
    head.bias.copy_(params["head"]["bias"])

  class Twin(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1, self.conv2, self.head = conv1, conv2, head

    def forward(self, x):
      x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
      return self.head(x.mean(dim=(2, 3)))

  return Twin().eval()


@pytest.fixture(scope="module", autouse=True)
def cheap_random_bits():
  """JAX's 'rbg' generator while these tests run, its default (threefry) restored after.

  The sanity checks draw fresh parameters, faithfulness correlation its subsets and ROAD
  its noise keys; XLA on the CPU takes seconds to compile threefry's rounds and a
  fraction of that for 'rbg'. The comparisons with Quantus hand over numpy's draws; the
  rest depends on the bits being drawn, not on which.
  """
  previous = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_default_prng_impl", previous)


@pytest.fixture(scope="module")
def tiny():
  module = TinyNet()
  rng = np.random.default_rng(0)
  images = rng.standard_normal((BATCH, SIZE, SIZE, 1)).astype(np.float32)

  draw = np.random.default_rng(101)  # weights whose predictions differ between images

  def dense(fan_in, shape, scale=1.0):  # LeCun normal, as flax's default init
    return (scale * draw.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

  # Drawn in numpy: `init` would compile a random-number program for nothing. A larger
  # head spreads the probabilities, so that perturbations move them visibly.
  variables = {"params": {
      "conv1": {"kernel": dense(9, (3, 3, 1, 8)), "bias": dense(1, 8, 0.1)},
      "conv2": {"kernel": dense(72, (3, 3, 8, 8)), "bias": dense(1, 8, 0.1)},
      "head": {"kernel": dense(8, (8, 10), 8.0), "bias": dense(1, 10, 0.1)}}}
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
      np.shape, jax.eval_shape(module.init, jax.random.key(0), images))
  twin = _torch_twin(variables)
  logits = np.asarray(jitted.apply(module, variables, images))
  with torch.no_grad():
    ref = twin(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
  labels = logits.argmax(1)
  maps = rng.standard_normal((BATCH, SIZE, SIZE)).astype(np.float32)
  return module, variables, twin, images, labels, maps


def _nchw(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def _quantus(metric, twin, images, labels, maps, **kwargs):
  return np.asarray(metric(model=twin, x_batch=_nchw(images), y_batch=labels,
                           a_batch=np.asarray(maps)[:, None], channel_first=True, device="cpu",
                           **kwargs), dtype=np.float64)


def test_deletion_and_insertion_curves_match_quantus_pixel_flipping(tiny):
  module, variables, twin, images, labels, maps = tiny
  steps = 8  # 144 pixels, 18 per step
  ours = metrics.deletion(module, variables, images, maps, labels, steps=steps, baseline=0.5)
  assert ours.scores.shape == (BATCH, steps + 1) and ours.fractions[-1] == 1.0
  ref = _quantus(quantus.PixelFlipping(features_in_step=SIZE * SIZE // steps,
                                       perturb_baseline=0.5, normalise=False,
                                       disable_warnings=True),
                 twin, images, labels, maps, softmax=True)
  error = np.abs(ours.scores[:, 1:] - ref).max()
  print(f"deletion curve vs Quantus PixelFlipping: max abs error {error:.1e}")
  assert error < 1e-5
  probabilities = np.asarray(jax.nn.softmax(jitted.apply(module, variables, images)))
  np.testing.assert_allclose(ours.scores[:, 0], probabilities[np.arange(BATCH), labels],
                             rtol=1e-5)
  np.testing.assert_allclose(ours.auc, np.trapezoid(ours.scores, dx=1 / steps, axis=1),
                             rtol=1e-6)
  # Insertion into a flat baseline is deletion read backwards with the order reversed:
  # inserting the top k pixels leaves the same image as deleting the bottom H*W - k.
  inserted = metrics.insertion(module, variables, images, maps, labels, steps=steps,
                               baseline=0.5)
  reverse = metrics.deletion(module, variables, images, -maps, labels, steps=steps,
                             baseline=0.5)
  np.testing.assert_allclose(inserted.scores, reverse.scores[:, ::-1], rtol=1e-5, atol=1e-6)
  # A baseline of the wrong shape is named.
  with pytest.raises(explain.ExplainError, match=r"baseline of shape \(2,\) does not fit"):
    metrics.deletion(module, variables, images, maps, labels, baseline=[0.0, 1.0])
  with pytest.raises(explain.ExplainError, match="upsample=True"):
    metrics.deletion(module, variables, images, maps[:, :4, :4], labels)


def _quantus_road(twin, images, labels, maps, percentages):
  # Quantus returns {percentage: accuracy over the batch}.
  road = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, disable_warnings=True,
                      return_aggregate=False)
  out = road(model=twin, x_batch=_nchw(images), y_batch=labels, a_batch=np.asarray(maps)[:, None],
             channel_first=True, device="cpu")
  return np.array([out[p] for p in percentages])


def test_road_matches_quantus_without_noise(tiny):
  module, variables, twin, images, labels, maps = tiny
  percentages = [10, 40, 70, 95]
  ours = metrics.road(module, variables, images, maps, labels, percentages=percentages,
                      noise=0.0)
  ref = _quantus_road(twin, images, labels, maps, percentages)
  print("ROAD MoRF accuracy, ours vs Quantus:", ours.accuracy, ref)
  np.testing.assert_allclose(ours.accuracy, ref)
  assert ours.accuracy[-1] < 1  # the removal changes predictions: a real comparison
  # LeRF is MoRF on the negated map.
  lerf = metrics.road(module, variables, images, maps, labels, order="lerf",
                      percentages=percentages, noise=0.0)
  ref_lerf = _quantus_road(twin, images, labels, -maps, percentages)
  print("ROAD LeRF accuracy, ours vs Quantus:", lerf.accuracy, ref_lerf)
  np.testing.assert_allclose(lerf.accuracy, ref_lerf)


def test_linear_imputation_solves_quantus_system():
  noisy_linear_imputation = quantus.functions.perturb_func.noisy_linear_imputation
  rng = np.random.default_rng(1)
  image = rng.standard_normal((SIZE, SIZE, 2)).astype(np.float32)
  removed = rng.uniform(size=(SIZE, SIZE)) < 0.6
  removed[0, 0] = True  # a corner: its border weights are renormalised
  ref = noisy_linear_imputation(image.transpose(2, 0, 1), np.flatnonzero(removed), noise=0.0)
  ours = np.asarray(metrics.linear_imputation(image[None], jnp.asarray(removed[None])))[0]
  error = np.abs(ours - ref.transpose(1, 2, 0)).max()
  print(f"imputation vs Quantus (scipy spsolve): max abs error {error:.1e}")
  assert error < 1e-4
  np.testing.assert_array_equal(ours[~removed], image[~removed])


def test_faithfulness_correlation_matches_quantus_with_the_same_subsets(tiny):
  module, variables, twin, images, labels, maps = tiny
  runs, size = 12, 20
  np.random.seed(5)
  # Quantus's draw order: for each run, one subset per image.
  drawn = np.stack([np.stack([np.random.choice(SIZE * SIZE, size, replace=False)
                              for _ in range(BATCH)]) for _ in range(runs)], axis=1)
  np.random.seed(5)
  ref = _quantus(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size,
                                                 perturb_baseline=0.0, normalise=False,
                                                 return_aggregate=False, disable_warnings=True),
                 twin, images, labels, maps, softmax=True)
  ours = metrics.faithfulness_correlation(module, variables, images, maps, labels,
                                          subsets=drawn)
  print("faithfulness correlation, ours:", np.round(ours, 4), "Quantus:", np.round(ref, 4))
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  # The seeded draw: distinct pixels per subset, a correlation per image.
  seeded = metrics.faithfulness_correlation(module, variables, images, maps, labels, runs=runs,
                                            subset_size=size)
  assert seeded.shape == (BATCH,) and np.all(np.abs(seeded) <= 1)
  # The draw behind it (the same shapes: no new programs) holds distinct pixels per subset.
  subsets = np.asarray(metrics.random_subsets(jax.random.key(0), BATCH, SIZE * SIZE, runs, size))
  assert subsets.shape == (BATCH, runs, size)
  assert all(len(set(s)) == size for s in subsets.reshape(-1, size))


def test_max_sensitivity_matches_quantus_with_the_same_noise(tiny):
  module, variables, twin, images, labels, _ = tiny
  samples, radius = 3, 0.3

  def ours_fn(x, t):
    return explain.input_gradients(module, variables, x, t)

  def quantus_fn(model, inputs, targets, **kwargs):  # NCHW in, [N, 1, H, W] out
    x = np.asarray(inputs).transpose(0, 2, 3, 1)
    return np.asarray(ours_fn(x, np.asarray(targets)))[:, None]

  np.random.seed(3)
  noise = np.stack([np.random.uniform(-radius, radius, (BATCH, SIZE * SIZE))
                    for _ in range(samples)]).reshape(samples, BATCH, 1, SIZE, SIZE)
  noise = noise.transpose(0, 1, 3, 4, 2).astype(np.float32)
  np.random.seed(3)
  a = quantus_fn(None, _nchw(images), labels)
  ref = _quantus(quantus.MaxSensitivity(nr_samples=samples, lower_bound=radius, normalise=False,
                                        return_aggregate=False, disable_warnings=True),
                 twin, images, labels, a[:, 0], explain_func=quantus_fn)
  ours = metrics.max_sensitivity(ours_fn, images, labels, noise=noise, batch_size=BATCH)
  print("max-sensitivity, ours:", np.round(ours, 4), "Quantus:", np.round(ref, 4))
  np.testing.assert_allclose(ours, ref, rtol=1e-4)
  assert np.all(ours > 0.01)


def test_pointing_game_matches_quantus_and_needs_boxes(tiny):
  module, variables, twin, images, labels, maps = tiny
  boxes = np.array([[0, 0, 6, 6], [6, 6, 12, 12], [2, 3, 9, 8], [0, 0, 12, 12],
                    [5, 0, 7, 12], [0, 0, 0, 0]])
  masks = metrics.boxes_to_masks(boxes, SIZE, SIZE)
  assert masks.sum(axis=(1, 2)).tolist() == [36, 36, 35, 144, 24, 0]
  ours = metrics.pointing_game(maps, boxes=boxes)
  ref = _quantus(quantus.PointingGame(normalise=False, return_aggregate=False,
                                      disable_warnings=True),
                 twin, images, labels, maps, s_batch=masks[:, None].astype(np.float32))
  print("pointing game, ours:", ours, "Quantus:", ref)
  # Quantus's NaN for an empty mask lands in a bool array and reads as a hit; ours says NaN.
  np.testing.assert_array_equal(ours[:5], ref[:5])
  assert np.isnan(ours[5]) and ours[3] == 1
  # A peak one pixel outside the box counts with tolerance 1.
  peak = np.zeros((1, SIZE, SIZE), np.float32)
  peak[0, 6, 6] = 1
  assert metrics.pointing_game(peak, boxes=[[0, 0, 6, 6]])[0] == 0
  assert metrics.pointing_game(peak, boxes=[[0, 0, 6, 6]], tolerance=1)[0] == 1
  with pytest.raises(explain.ExplainError, match="pointing game needs the objects' locations"):
    metrics.pointing_game(maps)
  with pytest.raises(explain.ExplainError, match="pointing_game metric needs"):
    metrics.evaluate(["deletion", "pointing_game"], module, variables, images, maps)
  with pytest.raises(explain.ExplainError, match="unknown metric 'auc'"):
    metrics.evaluate(["auc"], module, variables, images, maps)


# --- Sanity checks (Adebayo et al. 2018).


def test_ssim_and_spearman_match_scikit_image_and_scipy():
  from scipy.stats import spearmanr  # pylint: disable=import-outside-toplevel
  from skimage.metrics import structural_similarity  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(2)
  a = rng.uniform(size=(3, 16, 16)).astype(np.float32)
  b = (a + rng.normal(0, 0.3, a.shape)).astype(np.float32)
  b[:, :4] = 0.0  # ties, as the zeros of a ReLU'd Grad-CAM
  a[:, :, 0], b[:, :, 0] = -1.0, -1.0  # min-max normalisation maps these to 0
  for ours, i in zip(sanity.ssim(a, b, absolute=False), range(3)):
    na, nb = ((x[i] - x[i].min()) / (x[i].max() - x[i].min()) for x in (a, b))
    ref = structural_similarity(na, nb, data_range=1.0, win_size=7)
    assert abs(ours - ref) < 1e-4, (ours, ref)
  ref_rank = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
  np.testing.assert_allclose(sanity.spearman(a, b, absolute=False), ref_rank, atol=1e-5)
  np.testing.assert_allclose(sanity.ssim(a, a), 1.0, atol=1e-5)


def test_cascading_and_independent_randomisation_and_the_plot(tiny, tmp_path):
  module, variables, _, images, labels, _ = tiny
  methods = {"saliency": sanity.method_fn("saliency"),
             "gradcam": sanity.method_fn("gradcam", layer="conv2")}
  assert sanity.layer_order(module, variables, images) == ["conv1", "conv2", "head"]
  cascading = sanity.model_randomisation(module, variables, images, methods, labels)
  assert cascading.steps == ["original", "head", "conv2", "conv1"]
  for name in methods:
    assert cascading.ssim[name].shape == (4,) and cascading.ssim[name][0] == 1.0
  print("cascading SSIM:", {k: np.round(v, 3) for k, v in cascading.ssim.items()},
        "Spearman:", {k: np.round(v, 3) for k, v in cascading.spearman.items()})
  # With every layer re-drawn, the maps no longer follow the trained ones.
  assert cascading.spearman["saliency"][-1] < 0.5 and cascading.ssim["saliency"][-1] < 0.5
  independent = sanity.model_randomisation(module, variables, images,
                                           {"saliency": methods["saliency"]}, labels,
                                           mode="independent")
  # Its first step re-draws the head alone: the same model as the cascade's first step.
  assert independent.spearman["saliency"][1] == pytest.approx(cascading.spearman["saliency"][1])
  # Data randomisation: two sets of weights, the same explained classes.
  other = sanity.randomise_layers(module, variables, images, ["conv1", "conv2", "head"], seed=9)
  data = sanity.data_randomisation(module, variables, other, images, methods, labels)
  assert data.steps == ["original", "permuted labels"] and data.ssim["saliency"][1] < 0.9
  path = sanity.plot([cascading, independent, data], str(tmp_path / "sanity.png"))
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as image:
    assert image.size[0] > 500 and image.size[1] > 700
  with pytest.raises(explain.ExplainError, match="layer 'conv9' has no parameters"):
    sanity.randomise_layers(module, variables, images, ["conv9"])


def test_permuted_labels_keep_the_images_and_the_label_counts():
  from vision_jax.data import digits_dataset  # pylint: disable=import-outside-toplevel
  dataset = digits_dataset(image_size=8)
  permuted = sanity.permute_labels(dataset, seed=1)
  assert permuted.train[0] is dataset.train[0] and permuted.eval is dataset.eval
  assert np.array_equal(np.bincount(permuted.train[1]), np.bincount(dataset.train[1]))
  assert np.mean(permuted.train[1] == dataset.train[1]) < 0.2
