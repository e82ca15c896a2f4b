"""Real (allocated) forward passes over the registry at tiny sizes, and gradient steps.

Parameters are filled with numpy from the eval_shape shapes (compiling every
random initialiser on the CPU would cost more than the forward itself).
Variants above MAX_PARAMS are covered by the abstract checks of test_models.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import models

MAX_PARAMS = 30_000_000
GRAD_STEP = ["cifar_resnet20", "resnet18", "resnetv2_50x1_bit", "efficientnet_b0",
             "vit_tiny_patch16_224", "vit_tiny_r_s16_p8_224"]


def tiny_setup(name, num_classes=10, **kw):
  """(module, input size) at the smallest size the architecture comfortably takes."""
  info = models.model_info(name)
  if info.family == "vit":
    size = 64 if "_r" in name else 32
    return models.create_model(name, num_classes=num_classes, img_size=size, **kw), size
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


def _num_params(name):
  module = models.create_model(name)
  size = models.model_info(name).input_size
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))


SMALL = [n for n in models.list_models() if _num_params(n) <= MAX_PARAMS]


# Families with no variant under MAX_PARAMS, and the test that runs their forward at reduced width.
FORWARD_ELSEWHERE = {"vgg": "tests/test_vgg.py (every VGG has over 130M parameters)"}


def test_small_set_covers_every_family():
  families = {models.model_info(n).family for n in SMALL} | set(FORWARD_ELSEWHERE)
  assert families == {models.model_info(n).family for n in models.list_models()}


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


@pytest.mark.parametrize("name", GRAD_STEP)
def test_one_gradient_step_lowers_the_loss(name):
  module, size = tiny_setup(name, num_classes=4)
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

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0
  # A small normalised step along -grad: first order, the loss drops by 1e-3 * |grad|.
  step = 1e-3 / float(optax.tree.norm(grads))
  new = jax.tree_util.tree_map(lambda p, g: p - step * g, params, grads)
  assert float(jax.jit(loss_fn)(new)) < float(loss)
