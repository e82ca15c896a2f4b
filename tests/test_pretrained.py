"""Starting from pretrained weights: merge, skip, resample, report, errors; lr multipliers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vision_jax.config_util import ConfigError
from vision_jax.train import optim, pretrained, trainer
from tests.test_train import digits_config, read_metrics


def _vars(head=10, grid=4, width=8):
  rng = np.random.default_rng(0)
  return {"params": {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 1, width)))},
                     "pos_embed": jnp.asarray(rng.standard_normal((1, 1 + grid * grid, width))),
                     "head": {"kernel": jnp.ones((width, head)), "bias": jnp.ones((head,))}},
          "batch_stats": {"bn": {"mean": jnp.ones((width,))}}}


def test_merge_loads_skips_head_and_reports():
  target, source = _vars(head=3), _vars(head=10)
  source["params"]["extra"] = {"kernel": jnp.ones((2, 2))}
  source["params"]["conv"]["kernel"] = source["params"]["conv"]["kernel"] + 1.0
  merged, report = pretrained.merge_pretrained(target, source)
  np.testing.assert_array_equal(merged["params"]["conv"]["kernel"], source["params"]["conv"]["kernel"])
  assert float(jnp.abs(merged["params"]["head"]["kernel"]).max()) == 0.0  # re-initialised to zero
  assert sorted(report.skipped) == ["params/head/bias", "params/head/kernel"]
  assert report.unexpected == ["params/extra/kernel"]
  assert "params/conv/kernel" in report.loaded and "batch_stats/bn/mean" in report.loaded
  table = report.table()
  assert "unexpected" in table and "params/extra/kernel" in table


def test_merge_resamples_position_embeddings():
  target, source = _vars(grid=6), _vars(grid=3)
  merged, report = pretrained.merge_pretrained(target, source)
  assert report.resampled == ["params/pos_embed"]
  assert merged["params"]["pos_embed"].shape == (1, 37, 8)
  np.testing.assert_allclose(merged["params"]["pos_embed"][:, 0], source["params"]["pos_embed"][:, 0])


def test_merge_shape_mismatch_names_parameter_and_shapes():
  target, source = _vars(width=8), _vars(width=8)
  source["params"]["conv"]["kernel"] = jnp.ones((3, 3, 2, 8))
  with pytest.raises(ConfigError, match=r"params/conv/kernel.*\(3, 3, 2, 8\).*\(3, 3, 1, 8\).*dont_load"):
    pretrained.merge_pretrained(target, source)
  merged, report = pretrained.merge_pretrained(target, source, dont_load=["params/head/.*", "params/conv/.*"])
  assert "params/conv/kernel" in report.skipped


def test_merge_of_unrelated_checkpoint_is_an_error():
  with pytest.raises(ConfigError, match="Nothing could be loaded"):
    pretrained.merge_pretrained(_vars(), {"params": {"other": {"w": jnp.ones(3)}}})


def test_lr_multipliers_freeze_all_but_head():
  params = {"body": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
  c = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.0, "weight_decay": 0.1,
                                 "lr_mults": [("head/.*", 1.0), (".*", 0.0)]})
  tx = optim.make_optimizer(c, optax.constant_schedule(0.5))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["body"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(updates["head"]["kernel"]).max()) > 0.0


@pytest.mark.xdist_group("digits_smoke")  # shares compiled programs: see conftest.py
def test_init_from_another_workdir(tmp_path):
  trainer.train_and_evaluate(digits_config(), str(tmp_path / "pre"))
  config = digits_config(total_steps=2, init_from=str(tmp_path / "pre"))
  config.optimizer.lr_mults = [("head/.*", 1.0), (".*", 0.0)]
  config.freeze_bn = True
  final = trainer.train_and_evaluate(config, str(tmp_path / "fine"))
  assert final["eval_count"] == 360
  # Frozen body (lr multiplier 0, frozen BN): it equals the pretrained run's; the head moved.
  import orbax.checkpoint as ocp
  restore = lambda d, s: ocp.StandardCheckpointer().restore(str(tmp_path / d / "checkpoints" / s / "state"))
  pre, fine = restore("pre", "4"), restore("fine", "2")
  for key in ("conv1", "layer2_0"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, fine["params"][key], pre["params"][key])
  jax.tree_util.tree_map(np.testing.assert_array_equal, fine["batch_stats"], pre["batch_stats"])
  assert not np.array_equal(fine["params"]["head"]["kernel"], pre["params"]["head"]["kernel"])
  with pytest.raises(ConfigError, match="neither a workdir"):
    trainer.train_and_evaluate(digits_config(init_from=str(tmp_path / "nope")), str(tmp_path / "x"))


@pytest.mark.slow
def test_digits_transfer_beats_scratch(tmp_path):
  """Seed 0 of the offline transfer check (experiments/digits_transfer.py), on one device:
  0-4 pretraining beats scratch on 10-shot 5-9 after the same 100 fine-tuning steps."""
  from tests.conftest import load_experiment  # pylint: disable=import-outside-toplevel
  experiment = load_experiment("digits_transfer")
  top1 = experiment.run_seed(0, str(tmp_path), num_devices=1)
  # Protocol of issue 29 (fine-tuning lr 0.02): measured over 5 seeds at every instruction-set
  # level XLA accepts here, 1 and 2 cores, 1 and 8 devices (34 runs, experiments/README.md):
  # pretraining 98.3-100%, pretrained 78.9-88.3%, scratch 41.7-53.3%, gap 30.6-42.2 points.
  # Bounds below the worst case: pretraining 1.3 points, pretrained 8.9, gap 15.6.
  assert top1["pretrain_01234"] > 0.97, top1
  assert top1["pretrained"] > 0.70, top1
  assert top1["pretrained"] - top1["scratch"] > 0.15, top1


def test_match_encoder_nesting_both_ways():
  encoder = {"conv1": {"kernel": np.ones((3, 3, 1, 4))}}
  simclr_ckpt = {"params": {"encoder": encoder, "head": {"dense_0": {"kernel": np.ones((4, 4))}}},
                 "batch_stats": {"encoder": {"bn1": {"mean": np.zeros(4)}}, "head": {}}}
  plain_params = {"conv1": {"kernel": None}, "head": {"kernel": None}}
  # SimCLR checkpoint into a plain model: the encoder, without the projection head.
  got = pretrained.match_encoder_nesting(simclr_ckpt, plain_params, "w")
  assert got == {"params": encoder, "batch_stats": simclr_ckpt["batch_stats"]["encoder"]}
  # Plain weights into a SimCLR model: everything under encoder/.
  plain_ckpt = {"params": encoder, "batch_stats": {}}
  got = pretrained.match_encoder_nesting(plain_ckpt, {"encoder": {}, "head": {}}, "w")
  assert got == {"params": {"encoder": encoder}}
  # Same nesting on both sides: unchanged.
  assert pretrained.match_encoder_nesting(plain_ckpt, plain_params, "w") is plain_ckpt
