"""Real (allocated) forward passes at tiny sizes, and gradient steps, one model per family.

Every registered variant gets an abstract forward (shapes, dtypes, parameter count) in
test_models.py, and every family a real forward against its reference in its parity tests
(test_resnet.py, test_vit.py, ...). Here the smallest registered variant of each family runs
for real at a tiny input size (finite, input-dependent logits; pooled features without the
head), and one gradient step per family, at reduced width and depth, lowers the loss.
Parameters are filled with numpy from the eval_shape shapes (compiling every random
initialiser on the CPU would cost more than the forward itself).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import models
from vision_jax.models import efficientnet
from vision_jax.models import efficientnetv2

from tests import pins

# One gradient step per family: the registered name and overrides that keep its code path
# (block type, norm, attention, SE, layer scale) at a fraction of the width and depth.
GRAD_STEP = {
    "cifar_resnet20": {},
    "resnet18": {"stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8},
    "resnet50": {"stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8},
    "resnetv2_50x1_bit": {"layers": (1, 1), "channels": (128, 128), "stem_chs": 32},
    # An expansion-free block, a strided MBConv and a residual one (all with SE): every block
    # kind of the family, where depth_mult=0.1 still builds seven stages (twice the compile).
    "efficientnet_b0": {"stages": (
        efficientnet.StageSpec(repeats=1, kernel=3, stride=1, expand=1, features=16),
        efficientnet.StageSpec(repeats=2, kernel=5, stride=2, expand=6, features=24)),
                        "width_mult": 0.25, "head_width": 64},
    "vit_tiny_patch16_224": {"depth": 2},
    "vit_tiny_r_s16_p8_224": {"depth": 1},
    "convnext_atto": {"depths": (1, 1, 1, 1), "widths": (8, 8, 16, 16)},
    # A fused (expanded) stage and a depthwise MBConv stage with SE.
    "efficientnetv2_s": {"stages": (
        efficientnetv2.StageSpec("fused", 1, 8, stride=2, expand=2),
        efficientnetv2.StageSpec("mbconv", 1, 16, stride=2, expand=2, se_ratio=0.25)),
                         "stem_width": 8, "head_width": 32},
    # MBConv stages, then block and grid attention (MaxViT), or attention over the whole map
    # (CoAtNet), at 64 px: 2x2 windows in every stage.
    "maxvit_tiny_tf_224": {"embed_dims": (8, 8, 16, 16), "depths": (1, 1, 1, 1),
                           "stem_width": (8, 8), "dim_head": 8, "head_hidden_size": 8},
    "coatnet_0_rw_224": {"embed_dims": (8, 8, 16, 16), "depths": (1, 1, 1, 1),
                         "stem_width": (8, 8), "dim_head": 8},
}
# Families whose stage layout needs a larger image than 32 px (windows of side image / 32).
_SIZE_64 = ("maxvit", "coatnet")


def tiny_setup(name, num_classes=10, **kw):
  """(module, input size) at the smallest size the architecture comfortably takes."""
  info = models.model_info(name)
  if info.family == "vit":
    size = 64 if "_r" in name else 32
    return models.create_model(name, num_classes=num_classes, img_size=size, **kw), size
  if info.family in _SIZE_64:
    return models.create_model(name, num_classes=num_classes, img_size=64, **kw), 64
  return models.create_model(name, num_classes=num_classes, **kw), 32


def numpy_variables(module, size, seed=0):
  shapes = jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(max(fan_in, 1)), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# Families whose smallest variant runs elsewhere, and where.
FORWARD_ELSEWHERE = {
    "vgg": "tests/test_vgg.py (every VGG has over 130M parameters; run there at 1/8 width)",
    "resnet_v2": "tests/test_resnet_v2.py (BiT R50x1 against timm at 64 px)",
    "efficientnetv2": "tests/test_efficientnetv2.py (against timm, both padding styles, on a "
                      "3-stage table)",
    "maxvit": "tests/test_maxxvit.py (against timm at 1/4 width, 64 px)",
    "coatnet": "tests/test_maxxvit.py (against timm at 1/4 width, 64 px)",
}


def _smallest_per_family() -> list[str]:
  # By the pinned counts (checked against the models in tests/test_models.py): tracing every
  # registered model here would cost about 40 CPU s in each worker's collection.
  return sorted(name for family, name in pins.smallest_per_family().items()
                if family not in FORWARD_ELSEWHERE)


SMALL = _smallest_per_family()


def test_small_set_covers_every_family():
  families = {models.model_info(n).family for n in SMALL} | set(FORWARD_ELSEWHERE)
  assert families == {models.model_info(n).family for n in models.list_models()}
  assert {models.model_info(n).family for n in GRAD_STEP} == families - {"vgg"}


@pytest.mark.parametrize("name", SMALL)
def test_forward_tiny(name):
  module, size = tiny_setup(name)
  variables = numpy_variables(module, size)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, size, size, 3)), jnp.float32)
  logits = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert float(jnp.std(logits)) > 0  # the input reaches the output
  features = models.create_model(name, num_classes=0, **(
      {"img_size": size} if models.model_info(name).family == "vit" else {}))
  fvars = {k: v for k, v in variables.items()}
  fvars["params"] = {k: v for k, v in variables["params"].items() if k != "head"}
  pooled = jax.jit(lambda v, x: features.apply(v, x, train=False))(fvars, x)
  assert pooled.shape == (2, variables["params"]["head"]["kernel"].shape[0])


# MaxViT's step (27 s, mostly compiling block and grid attention) is in the slow tier; CoAtNet's
# runs its MBConv and attention code in the quick tier.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("maxvit")
                                  else n for n in sorted(GRAD_STEP)])
def test_one_gradient_step_lowers_the_loss(name):
  module, size = tiny_setup(name, num_classes=4, **GRAD_STEP[name])
  variables = numpy_variables(module, size)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((4, size, size, 3)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3])
  params = variables["params"]
  others = {k: v for k, v in variables.items() if k != "params"}

  def loss_fn(params):
    out = module.apply({"params": params, **others}, x, train=True, mutable=list(others) or False,
                       rngs={"dropout": jax.random.key(0)})
    logits = out[0] if others else out
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # One compiled program, called twice; the norms and the step are taken in numpy. (Compiled
  # with the norms and the update, the program costs about 40% more to compile, and a second
  # program for the loss alone more again; applied eagerly, they compile one small program
  # per parameter shape.)
  loss_and_grads = jax.jit(jax.value_and_grad(loss_fn))
  loss, grads = jax.device_get(loss_and_grads(params))
  norms = [float(np.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0
  # A small normalised step along -grad: first order, the loss drops by 1e-3 * |grad|.
  step = np.float32(1e-3 / np.sqrt(np.sum(np.square(norms))))
  new = jax.tree_util.tree_map(lambda p, g: np.asarray(p) - step * g, params, grads)
  new_loss, _ = loss_and_grads(new)
  assert float(new_loss) < float(loss)
