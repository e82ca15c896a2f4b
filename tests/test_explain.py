"""vision_jax.explain against the PyTorch references, on the same (random) weights.

Grad-CAM / Grad-CAM++ against pytorch-grad-cam, Integrated Gradients against
Captum, attention rollout against numpy on timm's own attention matrices, and
a deletion-curve faithfulness check on a trained digits model.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tests.timm_parity import randomize_norms, relative_error, timm_state_dict  # noqa: E402
from vision_jax import explain  # noqa: E402
from vision_jax.weights import from_timm  # noqa: E402

# One worker runs this whole file (`--dist loadgroup`), so that the module fixtures (the
# trained digits model, the reference models) are built once, not once per xdist worker.
pytestmark = pytest.mark.xdist_group("explain")

TOLERANCE = 1e-4


def _randomize_head(model, seed: int) -> None:
  # timm may start a classifier near zero; a random head gives every class its own map.
  g = torch.Generator().manual_seed(seed + 1)
  head = model.get_classifier()
  with torch.no_grad():
    head.weight.copy_(torch.randn(head.weight.shape, generator=g) / head.weight.shape[1] ** 0.5)
    head.bias.copy_(0.1 * torch.randn(head.bias.shape, generator=g))


def _pair(timm_name: str, image_size: int, seed: int = 0, batch: int = 2, **kwargs):
  """(timm model, our module, variables, NHWC images, NCHW tensor) with the same random weights."""
  torch.manual_seed(seed)
  model = timm.create_model(timm_name, pretrained=False, num_classes=10, **kwargs).eval()
  randomize_norms(model, seed)
  _randomize_head(model, seed)
  module, variables = from_timm(timm_name, timm_state_dict(model))
  x = np.random.default_rng(seed).standard_normal((batch, image_size, image_size, 3))
  x = x.astype(np.float32)
  return model, module, variables, x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="module")
def resnet50():
  return _pair("resnet50", 64)


@pytest.fixture(scope="module")
def vit_tiny():
  # Four blocks instead of twelve: the same code path, a third of the compile time.
  return _pair("vit_tiny_patch16_224", 64, img_size=64, depth=4)


@pytest.fixture(scope="module")
def resnet18():
  return _pair("resnet18", 32, seed=2)


def _normalise(maps: np.ndarray) -> np.ndarray:
  # pytorch-grad-cam's scale_cam_image without the resize.
  maps = maps - maps.min(axis=(1, 2), keepdims=True)
  return maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))


def _reference_cam(cam_class, model, target_layer, tensor, targets, map_size,
                   reshape_transform=None) -> np.ndarray:
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # pylint: disable=import-outside-toplevel

  class AtFeatureResolution(cam_class):
    def get_target_width_height(self, input_tensor):
      return map_size[1], map_size[0]  # (width, height): no resize, normalisation only

  with AtFeatureResolution(model=model, target_layers=[target_layer],
                           reshape_transform=reshape_transform) as cam:
    return cam(input_tensor=tensor, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def _check_cam(ours: np.ndarray, ref: np.ndarray) -> None:
  assert ours.shape == ref.shape
  # A map that is empty on both sides would compare equal for nothing.
  assert np.all(ref.max(axis=(1, 2)) > 0.99) and np.all(ref.std(axis=(1, 2)) > 0.05)
  error = relative_error(_normalise(ours), ref)
  print(f"CAM relative error {error:.2e}")
  assert error < TOLERANCE


def test_grad_cam_and_plus_plus_match_pytorch_grad_cam_on_resnet50(resnet50):
  from pytorch_grad_cam import GradCAM, GradCAMPlusPlus  # pylint: disable=import-outside-toplevel
  model, module, variables, x, tensor = resnet50
  targets = [3, 7]
  ours = np.asarray(explain.grad_cam(module, variables, x, targets))
  assert ours.shape == (2, 2, 2)
  _check_cam(ours, _reference_cam(GradCAM, model, model.layer4[-1], tensor, targets, ours.shape[1:]))
  ours_pp = np.asarray(explain.grad_cam_plus_plus(module, variables, x, targets))
  _check_cam(ours_pp, _reference_cam(GradCAMPlusPlus, model, model.layer4[-1], tensor, targets,
                                     ours_pp.shape[1:]))


def test_grad_cam_matches_pytorch_grad_cam_on_efficientnet_b0():
  from pytorch_grad_cam import GradCAM  # pylint: disable=import-outside-toplevel
  model, module, variables, x, tensor = _pair("efficientnet_b0", 64, seed=1)
  ours, used = explain.grad_cam(module, variables, x, return_targets=True)
  ours = np.asarray(ours)
  # timm's bn2 is BatchNormAct2d: the map after the SiLU, our default layer.
  ref = _reference_cam(GradCAM, model, model.bn2, tensor, np.asarray(used), ours.shape[1:])
  _check_cam(ours, ref)
  with torch.no_grad():
    assert np.array_equal(np.asarray(used), model(tensor).argmax(-1).numpy())


def _vit_reshape(tensor, side: int = 4):
  # pytorch-grad-cam's reshape transform for timm ViTs: drop the class token, to NCHW.
  result = tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2))
  return result.permute(0, 3, 1, 2)


def test_grad_cam_matches_pytorch_grad_cam_on_vit(vit_tiny):
  from pytorch_grad_cam import GradCAM  # pylint: disable=import-outside-toplevel
  model, module, variables, x, tensor = vit_tiny
  targets = [1, 8]
  ours = np.asarray(explain.grad_cam(module, variables, x, targets))
  assert ours.shape == (2, 4, 4)
  ref = _reference_cam(GradCAM, model, model.blocks[-1].norm1, tensor, targets, ours.shape[1:],
                       reshape_transform=_vit_reshape)
  _check_cam(ours, ref)


def _captum_ig(model, tensor, targets, baseline_nhwc, steps, method):
  from captum.attr import IntegratedGradients  # pylint: disable=import-outside-toplevel
  baseline = torch.from_numpy(np.asarray(baseline_nhwc).transpose(0, 3, 1, 2).copy())
  attributions = IntegratedGradients(model).attribute(
      tensor, baselines=baseline, target=list(targets), n_steps=steps, method=method)
  return attributions.detach().numpy().transpose(0, 2, 3, 1)


def test_integrated_gradients_match_captum_on_resnet18_and_vit(resnet18, vit_tiny):
  for (model, module, variables, x, tensor), baseline in ((resnet18, "blurred"),
                                                          (vit_tiny, "black")):
    targets = [2, 5]
    result = explain.integrated_gradients(module, variables, x, targets, baseline=baseline,
                                          steps=8, method="riemann_right", full_output=True)
    base = explain.gradients.make_baseline(jnp.asarray(x), baseline, 0.0, None)
    ref = _captum_ig(model, tensor, targets, base, 8, "riemann_right")
    assert np.abs(ref).max() > 0
    error = relative_error(np.asarray(result.attributions), ref)
    print(f"IG relative error vs Captum ({type(module).__name__}, {baseline}): {error:.2e}")
    assert error < TOLERANCE
    np.testing.assert_allclose(np.asarray(result.maps), np.asarray(result.attributions).sum(-1),
                               rtol=1e-6, atol=1e-6)
  # Same points, Captum's trapezoid weights sum to (n - 1) / n (see gradients.py).
  model, module, variables, x, tensor = vit_tiny
  ours = explain.integrated_gradients(module, variables, x, [2, 5], steps=8, method="trapezoid",
                                      full_output=True).attributions
  ref = _captum_ig(model, tensor, [2, 5], np.zeros_like(x), 8, "riemann_trapezoid")
  assert relative_error(np.asarray(ours) * 7 / 8, ref) < TOLERANCE


def test_attention_rollout_matches_numpy_on_timm_attention(vit_tiny):
  model, module, variables, x, tensor = vit_tiny
  captured = []
  hooks = []
  for block in model.blocks:
    block.attn.fused_attn = False  # the explicit softmax path, whose weights attn_drop sees
    hooks.append(block.attn.attn_drop.register_forward_hook(
        lambda mod, args, out: captured.append(args[0].detach().numpy())))
  try:
    with torch.no_grad():
      model(tensor)
  finally:
    for hook in hooks:
      hook.remove()
    for block in model.blocks:
      block.attn.fused_attn = True
  assert len(captured) == len(model.blocks)
  tokens = captured[0].shape[-1]
  rollout = np.broadcast_to(np.eye(tokens), (x.shape[0], tokens, tokens))
  for attention in captured:
    mixed = 0.5 * (attention.astype(np.float64).mean(axis=1) + np.eye(tokens))
    mixed /= mixed.sum(-1, keepdims=True)
    rollout = mixed @ rollout
  ref = rollout[:, 0, 1:].reshape(x.shape[0], 4, 4)
  ours = np.asarray(explain.attention_rollout(module, variables, x))
  error = relative_error(ours, ref)
  print(f"rollout relative error {error:.2e}")
  assert error < TOLERANCE
  assert np.all(ref.std(axis=(1, 2)) > 0)


# --- Compilation, bad input, faithfulness: on the embedded digits model.


def trained_digits_model(steps: int = 100, seed: int = 0):
  """cifar_resnet20 trained on the embedded digits (16 px) for `steps` Adam steps.

  A bare jitted loop on one device: the trainer (8 simulated devices, orbax, clu)
  costs minutes on a 2-core CI machine, this about 25 s for ~98% test top-1.

  Returns:
    (module, variables, test images [360, 16, 16, 1] in [-1, 1], test labels).
  """
  import optax  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.data import digits_dataset  # pylint: disable=import-outside-toplevel
  dataset = digits_dataset(image_size=16)
  x, y = dataset.train
  module = models.create_model("cifar_resnet20", num_classes=10)
  # Jitted (an eager init dispatches op by op: 12 s against 4 s for this one).
  variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 16, 16, 1)))
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))

  @jax.jit
  def step(params, stats, opt_state, images, labels):
    def loss_fn(p):
      logits, new = module.apply({"params": p, "batch_stats": stats}, images, train=True,
                                 mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, new["batch_stats"]
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(y), 64, replace=False)
    params, stats, opt_state = step(params, stats, opt_state, x[idx], y[idx])
  images, labels = dataset.eval
  return module, {"params": params, "batch_stats": stats}, images, labels


@pytest.fixture(scope="module")
def digits():
  module, variables, images, labels = trained_digits_model()
  accuracy = np.mean(np.asarray(jax.jit(module.apply)(variables, images)).argmax(1) == labels)
  assert accuracy > 0.9, accuracy  # the faithfulness test needs a model that has learned
  return module, variables, images, labels


def test_second_call_with_the_same_shapes_does_not_recompile(digits):
  module, variables, images, _ = digits
  # Batch 64 as the deletion test, so that the compiled functions are shared.
  explain.grad_cam(module, variables, images[:64])
  explain.integrated_gradients(module, variables, images[:64], steps=8)
  sizes = explain.cam._cams._cache_size(), explain.gradients._path_sum._cache_size()
  # New values, new explicit targets, the other CAM method, another rule, step count and
  # baseline value.
  explain.grad_cam_plus_plus(module, variables, images[64:128], targets=np.arange(64) % 10)
  explain.integrated_gradients(module, variables, images[64:128], steps=20, method="trapezoid",
                               black_value=-1.0)
  assert (explain.cam._cams._cache_size(), explain.gradients._path_sum._cache_size()) == sizes


def test_bad_requests_get_clear_errors(digits, vit_tiny):
  module, variables, images, _ = digits
  x = images[:2]
  with pytest.raises(explain.ExplainError, match=r"'layer9'.*Available layers.*layer3_2"):
    explain.grad_cam(module, variables, x, layer="layer9")
  with pytest.raises(explain.ExplainError, match=r"target 10 .*in \[0, 9\]"):
    explain.grad_cam(module, variables, x, targets=[3, 10])
  with pytest.raises(explain.ExplainError, match="rollout needs attention"):
    explain.attention_rollout(module, variables, x)
  # Another layer by name, and the upsampled, normalised form.
  maps = np.asarray(explain.grad_cam(module, variables, x, layer="layer2_2", upsample=True))
  assert maps.shape == (2, 16, 16) and maps.dtype == np.float32
  np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-5)
  np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0, atol=1e-6)
  rgb = explain.overlay(x[0], maps[0], mean=[0.5], std=[0.5])  # [-1, 1] inputs
  assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
  # alpha=0 gives the image back in uint8; alpha=1 the jet colours (blue at 0, dark red at 1).
  plain = explain.overlay(x[0], maps[0], alpha=0.0, mean=[0.5], std=[0.5])
  np.testing.assert_array_equal(plain[..., 1], np.round((x[0, ..., 0] + 1) / 2 * 255))
  np.testing.assert_array_equal(explain.heatmap_to_rgb(np.array([[0.0, 1.0]])),
                                [[[0, 0, 128], [128, 0, 0]]])


def deletion_curve(probabilities_fn, variables, images, labels, order: np.ndarray,
                   steps: int = 8, fill: float = -1.0) -> np.ndarray:
  """True-class probability as pixels are set to `fill` (black) in `order`, `steps` chunks.

  Args:
    order: [N, H*W] pixel indices, most important first.

  Returns:
    [steps + 1] mean probability over images, starting with the intact images.
  """
  n, h, w, c = images.shape
  flat = images.reshape(n, h * w, c).copy()
  probabilities = []
  chunk = -(-h * w // steps)
  for k in range(steps + 1):
    if k:
      idx = order[:, (k - 1) * chunk:k * chunk]
      flat[np.arange(n)[:, None], idx] = fill
    p = np.asarray(probabilities_fn(variables, flat.reshape(n, h, w, c)))
    probabilities.append(p[np.arange(n), labels].mean())
  return np.asarray(probabilities)


def area_under(curve: np.ndarray) -> float:
  # Trapezoid rule over the deleted fraction in [0, 1].
  return float(np.mean((curve[1:] + curve[:-1]) / 2))


def test_grad_cam_and_ig_delete_faster_than_random_on_digits(digits):
  module, variables, images, labels = digits
  x, y = images[:64], labels[:64]
  n, h, w, _ = x.shape
  rng = np.random.default_rng(0)
  probabilities = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x, train=False)))
  saliency = {
      "gradcam": np.asarray(explain.grad_cam(module, variables, x, y, upsample=True)),
      "ig": np.asarray(explain.integrated_gradients(module, variables, x, y, steps=8,
                                                    black_value=-1.0)),
  }
  aucs = {"random": area_under(deletion_curve(
      probabilities, variables, x, y, np.stack([rng.permutation(h * w) for _ in range(n)])))}
  for name, maps in saliency.items():
    # Ties (flat Grad-CAM regions, zero IG on black pixels) are broken at random.
    noise = rng.uniform(0, 1e-6, maps.shape)
    order = np.argsort(-(maps + noise).reshape(n, -1), axis=1)
    aucs[name] = area_under(deletion_curve(probabilities, variables, x, y, order))
    aucs[name + "_reverse"] = area_under(deletion_curve(probabilities, variables, x, y, order[:, ::-1]))
  print("deletion AUCs:", {k: round(v, 3) for k, v in aucs.items()})
  for name in saliency:
    assert aucs[name] < aucs["random"] < aucs[name + "_reverse"], aucs


def test_integrated_gradients_completeness_shrinks_with_steps(digits):
  module, variables, images, labels = digits
  x, y = images[:8], labels[:8]
  errors = {}
  for steps in (8, 64):
    result = explain.integrated_gradients(module, variables, x, y, steps=steps,
                                          method="trapezoid", black_value=-1.0, full_output=True)
    # Pooled over the images: one image with a small score difference would dominate a max.
    errors[steps] = float(np.abs(np.asarray(result.completeness_error)).sum()
                          / np.abs(np.asarray(result.score_difference)).sum())
    np.testing.assert_allclose(np.asarray(result.maps).sum(axis=(1, 2)),
                               np.asarray(result.attributions).sum(axis=(1, 2, 3)), rtol=1e-4,
                               atol=1e-4)
  print("IG |completeness error| / |score difference|:", errors)
  # The trapezoid rule's error falls as 1/steps^2 on smooth stretches of the path; kinks
  # (ReLUs switching) slow that down, so ask for a 4x drop where 64x is the smooth case.
  assert errors[64] < errors[8] / 4 and errors[64] < 0.05


_ONE_BLOCK_A_STAGE = {
    "maxvit": {"depths": (1, 1, 1, 1)}, "coatnet": {"depths": (1, 1, 1, 1)},
    "resnet_v2": {"layers": (1, 1, 1, 1)}, "efficientnet": {"depth_mult": 0.1},
    "efficientnetv2": {"depth_mult": 0.1}, "vit": {"depth": 1}, "vit_hybrid": {"depth": 1},
}


def test_every_family_gives_maps_metrics_and_sanity_steps():
  """Traced (not compiled) for one small variant per registered family: its default CAM
  layer and maps (the gradient CAMs; Eigen-CAM, whose layer-output forward Score-CAM
  shares), the jitted cores of the perturbation metrics, and the sanity checks' layer
  order and randomisation. Their numbers are tested on small models elsewhere
  (tests/test_explain_metrics.py); here, that no family breaks them."""
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.explain import cam, layers, metrics, sanity  # pylint: disable=import-outside-toplevel
  from tests import pins  # pylint: disable=import-outside-toplevel
  # The smallest of each family: the layer rule is the family module's, whatever the size.
  variants = pins.smallest_per_family()
  variants["vit_hybrid"] = "vit_tiny_r_s16_p8_224"
  assert {"resnet", "resnet_v2", "efficientnet", "vit", "maxvit", "coatnet"} <= set(variants)
  n, side = 2, 64
  x = jax.ShapeDtypeStruct((n, side, side, 3), jnp.float32)
  targets = jnp.zeros(n, jnp.int32)
  counts = (0, side * side // 2, side * side)  # deletion/insertion and ROAD points
  subsets = jax.ShapeDtypeStruct((n, 3, 16), jnp.int32)  # faithfulness: 3 runs of 16 pixels
  for family, name in sorted(variants.items()):
    # ViTs, MaxViT and CoAtNet are built for their input size (position tables, windows).
    built_for_size = family.startswith("vit") or family in ("maxvit", "coatnet")
    overrides = {"img_size": side} if built_for_size else {}
    # The default layer is where the family's module ends its feature maps (or, for ViTs,
    # its last block): one block a stage (one transformer block) keeps that place.
    overrides.update(_ONE_BLOCK_A_STAGE.get(family, {}))
    module = models.create_model(name, num_classes=5, **overrides)
    variables = jax.eval_shape(lambda x, m=module: m.init(jax.random.key(0), x), x)
    layer = layers.resolve_layer(module, None, x.shape, x.dtype)
    found = {}

    def trace(v, images, subsets, m=module, l=layer, found=found):
      maps, _ = cam._cams(m, v, images, targets, l)
      maps["eigencam"] = cam._eigen_cam(m, v, images, targets, l)[0]
      ranks = metrics._ranks(jax.image.resize(maps["gradcam"], images.shape[:3], "bilinear"))
      baseline = metrics.make_baseline(images, 0.0)
      curve = metrics._flip_curve(m, v, images, baseline, ranks, targets, counts,
                                  jnp.bool_(True), True)
      road = metrics._road(m, v, images, ranks, targets, jax.random.key(0), jnp.float32(0.01),
                           counts)
      drops = metrics._subset_drops(m, v, images, baseline, subsets, targets, True)
      # Sanity: the top-down order of the parameterised layers, and the top one randomised.
      found["order"] = sanity.layer_order(m, v, images)
      fresh = sanity.fresh_parameters(m, images, seed=1)
      randomised = sanity.randomise_layers(m, v, images, found["order"][-1:], fresh=fresh)
      again, _ = cam._cams(m, randomised, images, targets, l)
      return maps, curve, road, drops, again

    maps, curve, road, drops, again = jax.eval_shape(trace, variables, x, subsets)
    h, w = layer.map_shape
    assert maps["gradcam"].shape == (n, h, w) and h > 1 and w > 1, (name, layer)
    assert {k: v.shape for k, v in maps.items()} == {k: (n, h, w) for k in maps}, name
    assert curve.shape == (n, len(counts)) and drops.shape == (n, 3), name
    assert road[0].shape == road[1].shape == (n, len(counts)), name
    assert again["gradcam"].shape == (n, h, w), name
    order = found["order"]
    # Every parameterised top-level layer, once, the classifier last (randomised first).
    assert sorted(order) == sorted(variables["params"]) and order[-1] == "head", (name, order)
    assert len(order) >= 3, (name, order)
    # The top module's own parameters (a ViT's tokens) embed the input: randomised last.
    own = [k for k in order if not isinstance(variables["params"][k], dict)]
    assert order[:len(own)] == own, (name, order)
    if family.startswith("vit"):
      rollout = jax.eval_shape(
          lambda v, x, m=module: explain.rollout._rollout(m, v, x, "mean"), variables, x)
      assert rollout.shape == (2, module.grid_size, module.grid_size)
