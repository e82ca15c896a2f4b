"""SimCLR: NT-Xent loss, global negatives and BN across devices, LARS, train step, monitors."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vision_jax import models
from vision_jax.config_util import ConfigError
from vision_jax.data import digits as digits_lib
from vision_jax.data import digits_dataset
from vision_jax.models.heads import ProjectionHead
from vision_jax.train import optim, sharding, simclr, steps
from vision_jax.train.checkpoint import Checkpointer

from tests import jitted


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------
def numpy_nt_xent(z1, z2, temperature):
  """Eq. 1 of the paper written out view by view, in float64."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(u)
  n = n2 // 2
  losses, hits = [], []
  for i in range(n2):
    pos = (i + n) % n2
    others = [j for j in range(n2) if j != i]
    sims = np.array([u[i] @ u[j] for j in others]) / temperature
    s_pos = u[i] @ u[pos] / temperature
    losses.append(-(s_pos - np.log(np.sum(np.exp(sims)))))
    hits.append(others[int(np.argmax(sims))] == pos)
  return float(np.mean(losses)), float(np.mean(hits))


def tiny_model(head_layers=2):
  encoder = models.create_model("cifar_resnet20", num_classes=0, stage_sizes=(1, 1, 1),
                                widths=(4, 8, 8), stem_width=4)
  return simclr.SimCLRModel(encoder=encoder,
                            head=ProjectionHead(hidden_dim=16, out_dim=8, num_layers=head_layers))


def pair_batch(rng, pairs=16, size=8, noise=0.3):
  """Two noisy views of `pairs` random images: (pairs, 2, size, size, 3)."""
  images = rng.normal(size=(pairs, 1, size, size, 3))
  views = images + noise * rng.normal(size=(pairs, 2, size, size, 3))
  return {"image": views.astype(np.float32)}


def opt_config(**kw):
  return ml_collections.ConfigDict(kw)


def make_state(model, tx, use_ema=False, size=8):
  # Compiled as the trainer does (an eager init dispatches op by op, several times slower).
  init = functools.partial(steps.create_train_state, model=model, tx=tx,
                           input_shape=(1, size, size, 3), use_ema=use_ema)
  return steps.init_state(init, jax.random.key(0))


# ---------------------------------------------------------------------------
# 1. The loss against a plain numpy implementation.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_matches_numpy(temperature):
  rng = np.random.default_rng(int(temperature * 100))
  z1, z2 = rng.normal(size=(2, 12, 6)).astype(np.float32)
  z2 = z2 + 0.5 * z1  # correlated pairs, so that the positive often ranks first
  want_loss, want_acc = numpy_nt_xent(z1, z2, temperature)
  loss = simclr.nt_xent_loss(jnp.asarray(z1), jnp.asarray(z2), temperature)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  _, acc = simclr._nt_xent_terms(jnp.asarray(z1), jnp.asarray(z2), temperature)  # pylint: disable=protected-access
  assert float(acc) == pytest.approx(want_acc)
  # Scale-invariant (cosine similarity), symmetric in the two views, float32 from bfloat16.
  np.testing.assert_allclose(float(simclr.nt_xent_loss(3 * z1, 0.5 * z2, temperature)),
                             want_loss, rtol=1e-5)
  np.testing.assert_allclose(float(simclr.nt_xent_loss(z2, z1, temperature)), want_loss, rtol=1e-5)
  assert simclr.nt_xent_loss(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16),
                             temperature).dtype == jnp.float32


def test_nt_xent_limits():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(8, 32)).astype(np.float32)
  # Identical views and a cold temperature: the positive wins outright.
  assert float(simclr.nt_xent_loss(z, z, 0.01)) < 1e-3
  # Very hot temperature: uniform over the 2N - 1 candidates.
  np.testing.assert_allclose(float(simclr.nt_xent_loss(z, -z, 1e4)), np.log(15), rtol=1e-3)
  with pytest.raises(ValueError, match="z1 and z2"):
    simclr.nt_xent_loss(z, z[:4], 0.1)


# ---------------------------------------------------------------------------
# 2. Global negatives and global BatchNorm across 8 simulated devices.
# ---------------------------------------------------------------------------
def test_loss_uses_global_negatives_on_8_devices():
  assert jax.device_count() == 8
  rng = np.random.default_rng(1)
  z1, z2 = rng.normal(size=(2, 32, 16)).astype(np.float32)
  temperature = 0.2
  loss_and_grad = jax.jit(jax.value_and_grad(
      functools.partial(simclr.nt_xent_loss, temperature=temperature), argnums=(0, 1)))

  one = sharding.batch_sharding(sharding.make_mesh(1))
  single_loss, single_grads = loss_and_grad(jax.device_put(z1, one), jax.device_put(z2, one))

  eight = sharding.batch_sharding(sharding.make_mesh(8))
  s1, s2 = jax.device_put(z1, eight), jax.device_put(z2, eight)
  assert len(s1.addressable_shards) == 8 and s1.addressable_shards[0].data.shape == (4, 16)
  sharded_loss, sharded_grads = loss_and_grad(s1, s2)
  assert sharded_grads[0].sharding.is_equivalent_to(eight, 2)

  np.testing.assert_allclose(float(sharded_loss), float(single_loss), rtol=1e-5)
  np.testing.assert_allclose(float(sharded_loss), numpy_nt_xent(z1, z2, temperature)[0], rtol=1e-5)
  for got, want in zip(sharded_grads, single_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)

  # Negatives drawn only from each device's 4 pairs would give a different (much smaller) loss.
  local = np.mean([numpy_nt_xent(z1[i:i + 4], z2[i:i + 4], temperature)[0]
                   for i in range(0, 32, 4)])
  assert abs(float(sharded_loss) - local) > 0.5, (float(sharded_loss), local)


def _run_steps(num_devices, batches, model, tx, schedule, temperature):
  mesh = sharding.make_mesh(num_devices)
  init = functools.partial(steps.create_train_state, model=model, tx=tx,
                           input_shape=(1,) + batches[0]["image"].shape[2:], use_ema=False)
  rng = jax.random.key(0)
  shardings = sharding.state_shardings(jax.eval_shape(init, rng), mesh, fsdp=False)
  state = steps.init_state(init, rng, shardings)
  step = jax.jit(functools.partial(simclr.simclr_train_step, model=model, tx=tx,
                                   schedule=schedule, temperature=temperature),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  losses = []
  for batch in batches:
    state, metrics = step(state, sharding.make_global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return jax.device_get(state), losses


@pytest.mark.slow  # the sharded step is checked for the supervised recipe in the quick tier
def test_train_step_on_8_devices_matches_1_device():
  """Same losses and parameters whatever the device count: negatives and BN stats are global."""
  rng = np.random.default_rng(2)
  batches = [pair_batch(rng, pairs=16) for _ in range(2)]  # 2 pairs (4 views) per device
  model = tiny_model()
  schedule = optim.make_schedule(opt_config(base_lr=0.1, decay="constant"), 2, 0)
  tx = optim.make_optimizer(opt_config(name="sgd", momentum=0.9, weight_decay=1e-4), schedule)
  state1, losses1 = _run_steps(1, batches, model, tx, schedule, 0.5)
  state8, losses8 = _run_steps(8, batches, model, tx, schedule, 0.5)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  for tree8, tree1 in [(state8.params, state1.params), (state8.batch_stats, state1.batch_stats)]:
    for got, want in zip(jax.tree_util.tree_leaves(tree8), jax.tree_util.tree_leaves(tree1)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# 3. LARS against a numpy reference.
# ---------------------------------------------------------------------------
def numpy_lars(params, grads_seq, lr, wd, eta, momentum):
  """SimCLR's LARS: kernels (ndim > 1) get weight decay and the trust ratio
  eta * ||w|| / ||g + wd w||; biases and norm parameters get neither. Heavy-ball momentum."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  velocity = {k: np.zeros_like(v) for k, v in params.items()}
  history = []
  for grads in grads_seq:
    for k, w in params.items():
      g = grads[k].astype(np.float64)
      if w.ndim > 1:
        g = g + wd * w
        g = g * eta * np.linalg.norm(w) / np.linalg.norm(g)
      velocity[k] = momentum * velocity[k] + lr * g
      params[k] = w - velocity[k]
    history.append(dict(params))
  return history


def test_lars_matches_numpy_reference():
  rng = np.random.default_rng(3)
  params = {"conv": rng.normal(size=(3, 3, 2, 4)), "dense": rng.normal(size=(4, 3)),
            "bias": rng.normal(size=(3,)), "bn_scale": 1.0 + 0.1 * rng.normal(size=(4,))}
  params = {k: v.astype(np.float32) for k, v in params.items()}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
               for _ in range(2)]
  lr, wd, eta = 2.0, 0.05, 0.001
  schedule = optim.make_schedule(opt_config(base_lr=lr, decay="constant"), 10, 0)
  tx = optim.make_optimizer(opt_config(name="lars", weight_decay=wd, momentum=0.9,
                                       trust_coefficient=eta), schedule)
  want = numpy_lars(params, grads_seq, lr, wd, eta, 0.9)
  p = jax.tree_util.tree_map(jnp.asarray, params)
  opt_state = tx.init(p)
  for i, grads in enumerate(grads_seq):  # step 1 checks LARS itself, step 2 the momentum
    updates, opt_state = tx.update(jax.tree_util.tree_map(jnp.asarray, grads), opt_state, p)
    p = jax.tree_util.tree_map(lambda w, u: w + u, p, updates)
    for k in params:
      np.testing.assert_allclose(np.asarray(p[k]), want[i][k], rtol=1e-5, atol=1e-7,
                                 err_msg=f"step {i + 1}, {k}")
  # Exclusions really matter here: a bias step is lr * g, a kernel step ~ lr * eta * ||w||.
  first = want[0]
  np.testing.assert_allclose(first["bias"], params["bias"] - lr * grads_seq[0]["bias"], rtol=1e-6)
  kernel_step = np.linalg.norm(first["dense"] - params["dense"])
  np.testing.assert_allclose(kernel_step, lr * eta * np.linalg.norm(params["dense"]), rtol=1e-6)


# ---------------------------------------------------------------------------
# 4. The train step: learns on a fixed batch, updates params, BN stats and EMA.
# ---------------------------------------------------------------------------
def test_projection_head_layout():
  head = ProjectionHead(hidden_dim=None, out_dim=8, num_layers=3, dtype=jnp.bfloat16)
  variables = jitted.init(head, jax.random.key(0), jnp.ones((4, 12)), train=False)
  shapes = jax.tree_util.tree_map(jnp.shape, variables["params"])
  assert shapes == {"dense_0": {"kernel": (12, 12)}, "bn_0": {"scale": (12,), "bias": (12,)},
                    "dense_1": {"kernel": (12, 12)}, "bn_1": {"scale": (12,), "bias": (12,)},
                    "dense_2": {"kernel": (12, 8)}, "bn_2": {"scale": (8,)}}
  out, _ = jitted.apply(head, variables, jnp.ones((4, 12)), train=True, mutable=["batch_stats"])
  assert out.shape == (4, 8) and out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))


def test_simclr_model_features_and_projections():
  from tests.test_use_tools import random_variables  # pylint: disable=import-outside-toplevel
  model = tiny_model()
  # Drawn in numpy: flax's eager initialisers would compile each op, and the forward pass they
  # run (one image) shares no compiled op with the five-image calls below.
  variables = random_variables(model, (1, 8, 8, 3), train=False)
  assert set(variables["params"]) == {"encoder", "head"}
  images = jnp.asarray(np.random.default_rng(4).normal(size=(5, 8, 8, 3)), jnp.float32)
  z = jitted.apply(model, variables, images, train=False)
  h = jitted.apply(model, variables, images, train=False, features_only=True)
  assert z.shape == (5, 8) and h.shape == (5, 8) and h.dtype == jnp.float32
  # Separately compiled programs: XLA may fuse them differently, an ulp apart on some CPUs
  # (1.1e-7 relative seen on one machine of this kind), hence 1e-6 and not the default 1e-7.
  np.testing.assert_allclose(jitted.apply(model, variables, images, method="features"), h,
                             rtol=1e-6)
  np.testing.assert_allclose(
      simclr.simclr_features(variables["params"], variables["batch_stats"], images, model=model), h,
      rtol=1e-6)
  encoder_only = jitted.apply(model.encoder, {"params": variables["params"]["encoder"],
                                      "batch_stats": variables["batch_stats"]["encoder"]},
                                     images, train=False)
  np.testing.assert_allclose(h, encoder_only, rtol=1e-6)


def test_simclr_train_step_learns_fixed_batch():
  rng = np.random.default_rng(5)
  batch = {k: jnp.asarray(v) for k, v in pair_batch(rng, pairs=16).items()}
  model = tiny_model()
  schedule = optim.make_schedule(opt_config(base_lr=0.3, decay="cosine", end_lr_factor=0.1), 12, 2)
  tx = optim.make_optimizer(opt_config(name="sgd", momentum=0.9, weight_decay=1e-4), schedule)
  state0 = make_state(model, tx, use_ema=True)
  step = jax.jit(functools.partial(simclr.simclr_train_step, model=model, tx=tx, schedule=schedule,
                                   temperature=0.5, ema_decay=0.9))
  state, history = state0, []
  for _ in range(12):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  losses = [float(m["loss"]) for m in history]
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.3, losses
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert history[-1]["contrastive_accuracy"] >= history[0]["contrastive_accuracy"]
  assert all(0.0 <= float(m["contrastive_accuracy"]) <= 1.0 for m in history)
  np.testing.assert_allclose([float(m["learning_rate"]) for m in history],
                             [float(schedule(i)) for i in range(12)], rtol=1e-6)
  assert int(state.step) == 12 and int(state.first_nonfinite_step) == -1

  def changed(a, b):
    return [not np.allclose(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b))]
  assert all(changed(state.params["encoder"]["conv1"], state0.params["encoder"]["conv1"]))
  assert all(changed(state.params["head"], state0.params["head"]))
  assert all(changed(state.batch_stats["encoder"], state0.batch_stats["encoder"]))
  assert all(changed(state.batch_stats["head"], state0.batch_stats["head"]))
  assert any(changed(state.ema_params, state0.ema_params))
  assert any(changed(state.ema_params, state.params))  # EMA lags the parameters

  # NaN bookkeeping as in steps.train_step: the first bad step is recorded and kept.
  bad = {"image": batch["image"].at[0, 0, 0, 0, 0].set(jnp.nan)}
  state, metrics = step(state, bad)
  assert not np.isfinite(float(metrics["loss"])) and int(state.first_nonfinite_step) == 12
  state, _ = step(state, bad)
  assert int(state.first_nonfinite_step) == 12


def test_simclr_train_step_rejects_single_view_batch():
  model = tiny_model()
  tx = optim.make_optimizer(opt_config(name="sgd"), lambda s: 0.1)
  # The shape check comes before any use of the state: its shapes are enough.
  state = jax.eval_shape(functools.partial(steps.create_train_state, model=model, tx=tx,
                                           input_shape=(1, 8, 8, 3), use_ema=False),
                         jax.random.key(0))
  with pytest.raises(ValueError, match=r"\(B, 2, H, W, C\)"):
    simclr.simclr_train_step(state, {"image": jnp.zeros((4, 8, 8, 3))}, model=model, tx=tx,
                             schedule=lambda s: 0.1, temperature=0.5)


# ---------------------------------------------------------------------------
# 5. kNN and linear evaluation on synthetic features.
# ---------------------------------------------------------------------------
def clusters(rng, n, num_classes=10, dim=32, noise=0.3, centers=None):
  centers = rng.normal(size=(num_classes, dim)) if centers is None else centers
  labels = rng.integers(0, num_classes, size=n)
  return (centers[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32), labels, centers


def numpy_knn(train_x, train_y, test_x, k, temperature, num_classes):
  a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  sims = b @ a.T
  preds = []
  for row in sims:
    idx = np.argsort(-row)[:k]
    votes = np.zeros(num_classes)
    for j in idx:
      votes[train_y[j]] += np.exp(row[j] / temperature)
    preds.append(np.argmax(votes))
  return np.array(preds)


def test_knn_accuracy():
  rng = np.random.default_rng(6)
  train_x, train_y, centers = clusters(rng, 1000)
  test_x, test_y, _ = clusters(rng, 1000, centers=centers)
  assert simclr.knn_accuracy(train_x, train_y, test_x, test_y, k=20, num_classes=10) >= 0.99
  # Random labels (independent of the features, train and test): chance, 1/10; with 1000
  # test examples the standard error is ~0.01.
  chance = simclr.knn_accuracy(train_x, rng.integers(0, 10, 1000), test_x,
                               rng.integers(0, 10, 1000), k=20, num_classes=10)
  assert abs(chance - 0.1) < 0.05, chance
  # Exactly the brute-force vote, also with a ragged last chunk.
  x, y = rng.normal(size=(300, 16)).astype(np.float32), rng.integers(0, 5, size=300)
  q, qy = rng.normal(size=(70, 16)).astype(np.float32), rng.integers(0, 5, size=70)
  want = np.mean(numpy_knn(x, y, q, 7, 0.1, 5) == qy)
  assert simclr.knn_accuracy(x, y, q, qy, k=7, temperature=0.1, chunk_size=32) == pytest.approx(want)


def test_linear_eval():
  rng = np.random.default_rng(7)
  train_x, train_y, centers = clusters(rng, 1000, noise=1.0)
  test_x, test_y, _ = clusters(rng, 1000, noise=1.0, centers=centers)
  assert simclr.linear_eval(train_x, train_y, test_x, test_y, num_steps=300) >= 0.98
  # Mini-batch path.
  assert simclr.linear_eval(train_x, train_y, test_x, test_y, num_steps=300, batch_size=128) >= 0.98
  chance = simclr.linear_eval(train_x, rng.integers(0, 10, 1000), test_x,
                              rng.integers(0, 10, 1000), num_steps=300, num_classes=10)
  assert abs(chance - 0.1) < 0.05, chance


# ---------------------------------------------------------------------------
# 6. Two views of the digits.
# ---------------------------------------------------------------------------
def test_crop_resize_matrices():
  full = digits_lib.crop_resize_matrices(np.zeros(1), np.full(1, 8.0), 8, 16)[0]
  # Whole image: a plain bilinear resize (half-pixel centres), as jax.image.resize does it.
  plain = np.asarray(jax.image.resize(jnp.eye(8), (16, 8), "linear"))
  np.testing.assert_allclose(full, plain, atol=1e-6)
  m = digits_lib.crop_resize_matrices(np.array([2.0, 0.0]), np.array([4.0, 2.0]), 8, 4)
  np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-6)
  # A 4-pixel window resampled to 4 pixels picks exactly source pixels 2..5.
  np.testing.assert_allclose(m[0], np.eye(8)[2:6], atol=1e-6)
  # Everything comes from inside the window [0, 2).
  assert np.all(m[1][:, 2:] == 0)


def test_digits_simclr_views():
  dataset = digits_dataset(16, augment="simclr", views=2)
  assert dataset.views == 2
  batches = dataset.train_iterator(32, seed=0)
  batch = next(batches)
  assert batch["image"].shape == (32, 2, 16, 16, 1) and batch["image"].dtype == np.float32
  first, second = batch["image"][:, 0], batch["image"][:, 1]
  assert np.abs(first - second).mean() > 0.1  # two different augmentations
  # Same (seed, step): same views; an example's views do not depend on its batch-mates.
  again = next(dataset.train_iterator(32, seed=0))
  np.testing.assert_array_equal(batch["image"], again["image"])
  half = dataset.train_iterator(32, seed=0, process_index=1, process_count=2)
  np.testing.assert_array_equal(next(half)["image"], batch["image"][16:])
  assert not np.array_equal(next(dataset.train_iterator(32, seed=1))["image"], batch["image"])
  # Evaluation: single, unaugmented, the same images as the supervised source.
  plain = digits_dataset(16)
  eval_batch = next(dataset.eval_iterator(8))
  np.testing.assert_array_equal(eval_batch["image"], next(plain.eval_iterator(8))["image"])
  # Views keep the digit's pixel scale: background -1, strokes up to about 1.
  views = digits_lib.simclr_view(digits_lib.load_digits("train")[0][:64],
                                 [np.random.default_rng(i) for i in range(64)], 16, noise=0.0)
  assert views.min() >= -1.0 - 1e-6 and views.max() <= 1.0 + 1e-6


def test_digits_augment_and_views_are_checked():
  from vision_jax.data import DatasetError  # pylint: disable=import-outside-toplevel
  with pytest.raises(DatasetError, match="augment='rotate'"):
    digits_dataset(16, augment="rotate")
  with pytest.raises(DatasetError, match="views=3"):
    digits_dataset(16, views=3)
  assert next(digits_dataset(16, max_shift=2, views=2).train_iterator(4, 0))["image"].shape == (
      4, 2, 16, 16, 1)


# ---------------------------------------------------------------------------
# 7. The recipe in the trainer: configs/simclr_digits.py, resume, errors, linear probe.
# ---------------------------------------------------------------------------
def simclr_digits_config(arg="smoke", **changes):
  from tests.test_train import config_file  # pylint: disable=import-outside-toplevel
  return config_file("simclr_digits", arg, **changes)


def latest_state(workdir):
  """The latest checkpointed state of a workdir, as host arrays."""
  manager = Checkpointer(str(workdir), async_save=False)
  raw = manager.restore_raw()
  manager.close()
  return raw


TINY_ENCODER = {"stage_sizes": (1, 1, 1), "widths": (4, 8, 8), "stem_width": 4}


def _tiny(config):
  config.model.overrides = dict(TINY_ENCODER)
  config.schedule.decay = "constant"
  config.schedule.warmup_steps = 0
  return config


@pytest.fixture(scope="module")
def simclr_runs(tmp_path_factory):
  """The tiny recipe run for 4 steps straight, and as 2 + 2 (a restart from the straight run's
  step-2 checkpoint, its workdir copied as it was then): (root, final metrics of each). The
  linear probe starts from the straight run."""
  import shutil  # pylint: disable=import-outside-toplevel
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("simclr_runs")
  config = _tiny(simclr_digits_config(**{"total_steps": 4, "checkpoint_every_steps": 2}))
  final = trainer.train_and_evaluate(config, str(root / "straight"))
  # A copy cut back to step 2 resumes from there: a first 2-step run (and its final
  # evaluation) is not computed again.
  shutil.copytree(root / "straight", root / "resumed")
  shutil.rmtree(root / "resumed" / "checkpoints" / "4")
  resumed = trainer.train_and_evaluate(config, str(root / "resumed"))
  return root, final, resumed


# Both tests read the runs of the module fixture: one worker builds it once.
@pytest.mark.slow  # whole runs with a resume; the recipe's step is checked in the quick tier
@pytest.mark.xdist_group("simclr_runs")
def test_simclr_recipe_runs_and_resumes_exactly(simclr_runs):
  tmp_path, final, resumed = simclr_runs
  assert set(final) == {"knn_top1", "linear_top1", "eval_count"} and final["eval_count"] == 360
  assert 0.1 < final["knn_top1"] <= 1.0 and 0.1 < final["linear_top1"] <= 1.0

  # The same 4 steps as 2 + 2 (a restart from the step-2 checkpoint) give the same state.
  assert resumed == final

  a, b = latest_state(tmp_path / "straight"), latest_state(tmp_path / "resumed")
  assert int(a["step"]) == int(b["step"]) == 4
  for key in ("params", "batch_stats", "opt_state"):
    for x, y in zip(jax.tree_util.tree_leaves(a[key]), jax.tree_util.tree_leaves(b[key])):
      np.testing.assert_array_equal(x, y)
  assert set(a["params"]) == {"encoder", "head"}


@pytest.mark.parametrize("changes, match", [
    ({"grad_accum_steps": 2}, "grad_accum_steps > 1 is not available with recipe='simclr'"),
    ({"data.views": 1}, "two augmented views"),
    ({"data.mix": "mixup(0.2)"}, "config.data.mix does not apply"),
    ({"simclr.temperature": 0.0}, r"config.simclr.temperature=0.0: must be a number > 0"),
    ({"recipe": "swav"}, r"config.recipe='swav': choose one of .*'simclr', 'supervised'"),
    ({"trainable_params": "head/.*"}, "trainable_params is for supervised runs"),
    ({"freeze_bn": True}, "freeze_bn does not apply to recipe='simclr'"),
    ({"recipe": "supervised"}, "two views per image .* only recipe='simclr' uses"),
])
def test_simclr_config_errors(tmp_path, changes, match):
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  config = simclr_digits_config(**changes)
  with pytest.raises(ConfigError, match=match):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.slow  # reads the runs above; the probe itself is tests/test_probes.py's
@pytest.mark.xdist_group("simclr_runs")
def test_linear_probe_from_a_simclr_workdir(simclr_runs, tmp_path):
  """stage=linear loads the encoder (not the projection head) and trains only the classifier:
  every encoder parameter and BN statistic stays bit-exact, through SGD with momentum."""
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  pretrained = simclr_runs[0] / "straight"  # the fixture's 4-step SimCLR run
  probe = simclr_digits_config("smoke,stage=linear", total_steps=3, init_from=str(pretrained))
  probe.model.overrides = dict(TINY_ENCODER)
  final = trainer.train_and_evaluate(probe, str(tmp_path / "probe"))
  assert final["eval_count"] == 360

  pre, post = latest_state(pretrained), latest_state(tmp_path / "probe")
  encoder = {k: v for k, v in post["params"].items() if k != "head"}
  assert jax.tree_util.tree_structure(encoder) == jax.tree_util.tree_structure(
      pre["params"]["encoder"])
  for x, y in zip(jax.tree_util.tree_leaves(encoder),
                  jax.tree_util.tree_leaves(pre["params"]["encoder"])):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(jax.tree_util.tree_leaves(post["batch_stats"]),
                  jax.tree_util.tree_leaves(pre["batch_stats"]["encoder"])):
    np.testing.assert_array_equal(x, y)
  assert np.abs(post["params"]["head"]["kernel"]).max() > 0  # zero-initialised, then trained


def test_trainable_params_stop_gradients_and_freeze_updates():
  model = models.create_model("cifar_resnet20", num_classes=3, **TINY_ENCODER)
  schedule = optim.make_schedule(opt_config(base_lr=0.5, decay="constant"), 10, 0)
  tx = optim.make_optimizer(opt_config(name="sgd", momentum=0.9, weight_decay=0.1), schedule)
  frozen_tx = optim.freeze_except(tx, "head/.*")
  rng = np.random.default_rng(8)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)}
  # Drawn in numpy: flax's eager initialisers would compile each op of a one-image forward pass
  # that no later call shares (the step is jitted, the reference gradient takes 8 images).
  from tests.test_use_tools import random_variables  # pylint: disable=import-outside-toplevel
  variables = random_variables(model, (1, 8, 8, 1), train=False)
  state0 = steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      batch_stats=variables["batch_stats"], opt_state=frozen_tx.init(variables["params"]),
      ema_params=None, rng=jax.random.key(0), first_nonfinite_step=jnp.full((), -1, jnp.int32))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=frozen_tx, schedule=schedule,
                                   num_classes=3, freeze_bn=True, trainable="head/.*"))
  state = state0
  for _ in range(3):
    state, metrics = step(state, batch)
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    before = state0.params
    for key in path:
      before = before[key.key]
    if path[0].key == "head":
      assert not np.array_equal(leaf, before), path
    else:
      np.testing.assert_array_equal(leaf, before, err_msg=str(path))
  # The reported gradient is the head's alone: the backbone is behind stop_gradient.
  def head_loss(head):
    params = dict(state0.params, head=head)
    logits = model.apply({"params": params, "batch_stats": state0.batch_stats}, batch["image"],
                         train=False)
    return jnp.mean(steps.cross_entropy(logits, batch["label"], 3))
  _, first = step(state0, batch)
  want = optax.tree.norm(jax.grad(head_loss)(state0.params["head"]))
  np.testing.assert_allclose(float(first["grad_norm"]), float(want), rtol=1e-5)
  with pytest.raises(ConfigError, match="matches no parameter"):
    optim.freeze_except(tx, "classifier/.*").init(state0.params)


# Several hosts: the trainer's multi-process path (distributed init, process-local slices
# made into global arrays, gathered evaluation) is recipe-independent and is tested against
# one host in test_train.py::test_two_processes_match_one_process; that the SimCLR loss, its
# negatives and its BatchNorm span the whole global batch whatever the number of devices is
# test_train_step_on_8_devices_matches_1_device above.


# ---------------------------------------------------------------------------
# 8. The offline SimCLR check at CI size (full size: experiments/ssl_digits.py, 5 seeds).
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_simclr_digits_beats_random_encoder(tmp_path):
  """Label-free pretraining (5 epochs at batch 128 on one device, instead of 100 at 256)
  against the same linear probe and kNN on a randomly initialised encoder."""
  from tests.conftest import load_experiment  # pylint: disable=import-outside-toplevel
  experiment = load_experiment("ssl_digits")
  changes = {"batch_size": 128, "total_epochs": 5, "schedule.warmup_epochs": 1,
             "simclr.linear.steps": 1000, "eval_every_epochs": None,
             "checkpoint_every_epochs": None, "num_devices": 1}
  r = experiment.run(str(tmp_path), [0], "", changes, baselines=False)  # see the raw-pixel note
  simclr_linear, simclr_knn = r["simclr_linear_top1"][0], r["simclr_knn_top1"][0]
  # Measured at this size over seeds 0-4 (one device; experiments/README.md): linear probe
  # 95.0 +- 1.2% (93.1-96.4), kNN 90.8 +- 2.0% (88.9-93.1); random encoder 78.4 +- 2.4%
  # (74.7-80.8) / 63.7 +- 3.2% (59.2-66.9). SimCLR minus random: 14.4 to 20.6 points (linear),
  # 22.8 to 33.9 (kNN). Under --xla_cpu_max_isa=AVX2, seeds 0/1: linear 95.3 / 94.2%, kNN
  # 91.1 / 92.2%.
  # The bounds sit 4.4, 7.8 and 3.1 points below the worst seed.
  # Raw pixels (same probe) give 95.3%: SimCLR does not beat them at this size (it did by 0.6
  # to 2.5 points at 10 epochs), so that claim is checked at full size only:
  # experiments/ssl_digits.py, 98.6-99.7% over 5 seeds vs 95.6%.
  assert simclr_linear > r["random_linear_top1"][0] + 0.10, r
  assert simclr_knn > r["random_knn_top1"][0] + 0.15, r
  assert simclr_linear > 0.90, r
