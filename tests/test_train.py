"""The training engine: sharding, FSDP, multi-process, resume, failures, optimizers."""

import functools
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vision_jax.config_util import ConfigError, load_config, parse_arg, steps_from
from vision_jax.data import DatasetError
from vision_jax.train import optim, steps, trainer
from vision_jax.train.checkpoint import CheckpointError

from tests.conftest import ROOT, xla_flags  # noqa: E402  (ROOT: the repository root)


def config_file(name, arg="smoke", **changes):
  """configs/{name}.py's get_config(arg), then `changes` ({'a.b': value}) applied."""
  return load_config(os.path.join(ROOT, "configs", f"{name}.py"), arg, **changes)


def digits_config(arg="smoke", **changes):
  return config_file("digits", arg, **changes)


from vision_jax.train.metrics import read_metrics  # noqa: E402  (one reader of metrics.jsonl)


def losses(workdir):
  return [m["loss"] for m in read_metrics(workdir) if "loss" in m]


def run_main(args, devices=1, timeout=300, env_extra=None, popen=False):
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **(env_extra or {}))
  cmd = [sys.executable, "-m", "vision_jax.main"] + args
  if popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# Whole runs in this process (8 simulated devices).
# ---------------------------------------------------------------------------
@pytest.mark.xdist_group("digits_smoke")  # shares compiled programs: see conftest.py
def test_train_and_eval_on_8_devices(digits_smoke_run):
  assert jax.device_count() == 8
  workdir, _, final, messages = digits_smoke_run  # conftest.py: configs/digits.py:smoke
  # The console shows each logged step once (our progress line), not also clu's copy.
  step_lines = [m for m in messages if "loss" in m]
  assert len([m for m in step_lines if re.search(r"\bstep 2\b|\[2\]", m)]) == 1, step_lines
  assert final["eval_count"] == 360  # padded last batch masked: every test image once
  assert 0.0 <= final["eval_top1"] <= final["eval_top5"] <= 1.0
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics if "loss" in m] == [2, 4]
  assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
  assert os.listdir(workdir / "checkpoints")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


# Its data-parallel run compiles the plain smoke run's programs (logging is on the host).
# Two whole runs compared: slow tier; how FSDP shards is test_fsdp_shards_large_parameters.
@pytest.mark.slow
@pytest.mark.xdist_group("digits_smoke")  # shares compiled programs: see conftest.py
def test_fsdp_matches_data_parallel(tmp_path):
  dp = digits_config(log_every_steps=1)
  fsdp = digits_config(log_every_steps=1, fsdp=True)
  trainer.train_and_evaluate(dp, str(tmp_path / "dp"))
  trainer.train_and_evaluate(fsdp, str(tmp_path / "fsdp"))
  np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "dp"), rtol=1e-5)


def test_fsdp_shards_large_parameters():
  from vision_jax.train import sharding
  assert sharding.fsdp_spec((3, 3, 64, 128), 8) == jax.sharding.PartitionSpec(None, None, None, "data")
  assert sharding.fsdp_spec((10,), 8) == jax.sharding.PartitionSpec()
  assert sharding.fsdp_spec((7, 7, 3, 9 * 1001), 8) == jax.sharding.PartitionSpec()


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
  config = digits_config(log_every_steps=1, checkpoint_every_steps=1, total_steps=6)
  config.schedule.base_lr = 1e30
  config.schedule.warmup_steps = 0
  with pytest.raises(trainer.NonFiniteLossError, match=r"NaN or Inf at step \d+.*last good checkpoint"):
    trainer.train_and_evaluate(config, str(tmp_path))
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept, "the last good checkpoint must be kept"


# ---------------------------------------------------------------------------
# Bad input: clear errors, no JAX traceback.
# ---------------------------------------------------------------------------
def test_bad_batch_size(tmp_path):
  with pytest.raises(ConfigError, match="batch_size=12 does not divide across 8 devices"):
    trainer.train_and_evaluate(digits_config(batch_size=12), str(tmp_path))


def test_unknown_model_dataset_optimizer(tmp_path):
  with pytest.raises(ValueError, match="Unknown model 'resnet_9000'"):
    trainer.train_and_evaluate(digits_config(**{"model.name": "resnet_9000"}), str(tmp_path / "a"))
  with pytest.raises(DatasetError, match="Unknown dataset 'mnist_typo'"):
    trainer.train_and_evaluate(digits_config(**{"data.name": "mnist_typo"}), str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="Unknown optimizer 'adamx'"):
    trainer.train_and_evaluate(digits_config(**{"optimizer.name": "adamx"}), str(tmp_path / "c"))


def test_missing_config_field(tmp_path):
  config = digits_config()
  config.schedule.base_lr = None  # a field without a default
  with pytest.raises(ConfigError, match="schedule.base_lr"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.xdist_group("digits_smoke")  # shares compiled programs: see conftest.py
def test_workdir_of_another_model_is_refused(digits_smoke_run, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(digits_smoke_run.workdir, tmp_path / "run")  # a finished cifar_resnet20 run
  other = digits_config(**{"model.name": "cifar_resnet32"})
  with pytest.raises(CheckpointError, match="different model.*cifar_resnet20.*cifar_resnet32"):
    trainer.train_and_evaluate(other, str(tmp_path / "run"))


def test_config_arguments_are_typed_and_checked():
  arg = parse_arg("depth=50,smoke,lr=0.5", depth=18, smoke=False, lr=0.1, name="x")
  assert arg.depth == 50 and arg.smoke is True and arg.lr == 0.5
  with pytest.raises(ConfigError, match="Unknown config argument 'dpth'.*depth"):
    parse_arg("dpth=50", depth=18)
  with pytest.raises(ConfigError, match="not a int"):
    parse_arg("depth=fifty", depth=18)


def test_load_config_and_set_fields(tmp_path):
  config = load_config(os.path.join(ROOT, "configs", "digits.py"), "smoke,lr=0.2",
                       **{"schedule.decay": "linear", "batch_size": 32})
  assert config.schedule.base_lr == 0.2 and config.schedule.decay == "linear"
  assert config.batch_size == 32
  with pytest.raises(ConfigError, match="No config file at"):
    load_config(str(tmp_path / "missing.py"))


def test_durations_in_any_unit():
  c = ml_collections.ConfigDict({"total_epochs": 2, "warmup_examples": 1000, "log_every_steps": 7})
  assert steps_from(c, "total", examples_per_epoch=1000, batch_size=100) == 20
  assert steps_from(c, "warmup", examples_per_epoch=1000, batch_size=100) == 10
  assert steps_from(c, "log_every", examples_per_epoch=1000, batch_size=100) == 7
  assert steps_from(c, "eval_every", examples_per_epoch=1000, batch_size=100, default=3) == 3
  with pytest.raises(ConfigError, match="Set only one"):
    steps_from(ml_collections.ConfigDict({"total_steps": 1, "total_epochs": 1}), "total",
               examples_per_epoch=10, batch_size=1)


def test_cli_errors_are_clear(tmp_path):
  """The real process: exit code, one `error:` line, no traceback (tests/test_faults.py has
  every other mistake, in-process)."""
  def error_line(out, code):
    assert out.returncode == code, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]

  out = run_main(["--config=configs/does_not_exist.py", f"--workdir={tmp_path}"])
  assert "there is no config file 'configs/does_not_exist.py'" in error_line(out, 2)
  out = run_main(["--config=configs/digits.py:smoke", "--config.batch_size=3", f"--workdir={tmp_path}"],
                 devices=2)
  assert "config.batch_size=3 does not divide across 2 devices" in error_line(out, 2)


# ---------------------------------------------------------------------------
# Processes: two processes against one (SIGTERM and SIGKILL + resume: test_faults.py).
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  flags = ["--config=configs/digits.py:smoke", "--config.total_steps=3", "--config.log_every_steps=1"]
  # The one-host reference runs in this process, on 4 of its 8 devices.
  trainer.train_and_evaluate(digits_config(total_steps=3, log_every_steps=1, num_devices=4),
                             str(tmp_path / "one"))
  port = 20000 + os.getpid() % 20000
  procs = [run_main(flags + [f"--workdir={tmp_path / 'two'}", f"--coordinator_address=127.0.0.1:{port}",
                             "--num_processes=2", f"--process_id={i}", "--cpu_collectives=gloo"],
                    devices=2, popen=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
  ev = lambda d: [m for m in read_metrics(d) if "eval_top1" in m][-1]
  assert ev(tmp_path / "two")["eval_count"] == 360
  assert ev(tmp_path / "two")["eval_top1"] == pytest.approx(ev(tmp_path / "one")["eval_top1"])


# ---------------------------------------------------------------------------
# Step functions and optimizers alone.
# ---------------------------------------------------------------------------
class _MLP(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(nn.tanh(nn.Dense(16)(x)))


def _mlp_setup(ema=False, accum=1):
  model = _MLP()
  schedule = optax.constant_schedule(0.1)
  tx = optim.make_optimizer(ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9}), schedule)
  state = steps.create_train_state(jax.random.key(0), model, tx, (1, 4, 4, 1), use_ema=ema)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.standard_normal((8, 4, 4, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)}
  return model, tx, schedule, state, batch


@pytest.mark.parametrize("name,overrides,size", [
    ("cifar_resnet20", {"stage_sizes": (1, 1, 1)}, 16),  # truncated-normal convs, BatchNorm
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1}, 32),  # xavier, trunc-normal, zeros
])
def test_cpu_initialisation_at_opt_level_1_is_bitwise_the_default(name, overrides, size):
  """steps.init_state compiles initialisation at LLVM level 1 on the CPU: same values, bit for
  bit, as the default level (2), for the parameters, AdamW's moments, the EMA copy and the
  state's random key."""
  from vision_jax.models import create_model  # pylint: disable=import-outside-toplevel
  assert jax.default_backend() == "cpu" and steps.CPU_INIT_OPT_LEVEL == 1
  model = create_model(name, num_classes=10, **overrides)
  init = functools.partial(steps.create_train_state, model=model, tx=optax.adamw(1e-3),
                           input_shape=(1, size, size, 3), use_ema=True)
  mesh = jax.sharding.Mesh(jax.devices(), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = jax.random.key(7)
  fast = steps.init_state(init, rng, replicated)
  # XLA's default level, explicitly: the tests' own XLA_FLAGS lower it (tests/conftest.py).
  default = jax.jit(init, out_shardings=replicated).lower(rng).compile(
      compiler_options={"xla_backend_optimization_level": 2})(rng)

  def leaves(state):
    return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                       else x) for x in jax.tree_util.tree_leaves(state)]
  assert len(leaves(fast)) == len(leaves(default)) > 10
  for a, b in zip(leaves(fast), leaves(default)):
    np.testing.assert_array_equal(a, b)
  assert sum(np.std(x) > 0 for x in leaves(fast.params)) >= 3, "random weights were compared"


def test_gradient_accumulation_equals_full_batch():
  model, tx, schedule, state, batch = _mlp_setup()
  kw = dict(model=model, tx=tx, schedule=schedule, num_classes=3)
  full, m_full = steps.train_step(state, batch, grad_accum_steps=1, **kw)
  acc, m_acc = steps.train_step(state, batch, grad_accum_steps=4, **kw)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         full.params, acc.params)
  np.testing.assert_allclose(m_full["loss"], m_acc["loss"], rtol=1e-6)
  assert float(m_full["accuracy"]) == float(m_acc["accuracy"])


def test_ema_update():
  model, tx, schedule, state, batch = _mlp_setup(ema=True)
  new, _ = steps.train_step(state, batch, model=model, tx=tx, schedule=schedule, num_classes=3,
                            ema_decay=0.9)
  jax.tree_util.tree_map(
      lambda e, p0, p1: np.testing.assert_allclose(e, 0.9 * p0 + 0.1 * p1, rtol=1e-6),
      new.ema_params, state.params, new.params)


def test_label_smoothing_loss_matches_numpy():
  logits = np.array([[2.0, 0.5, -1.0]], np.float32)
  eps, k = 0.1, 3
  target = np.full(3, eps / k)
  target[1] += 1 - eps
  logp = logits[0] - np.log(np.sum(np.exp(logits[0])))
  expected = -np.sum(target * logp)
  got = steps.cross_entropy(jnp.asarray(logits), jnp.asarray([1]), 3, label_smoothing=eps)
  np.testing.assert_allclose(got[0], expected, rtol=1e-6)


def test_eval_step_masks_padding_and_top5():
  model, _, _, state, batch = _mlp_setup()
  batch = dict(batch, mask=jnp.asarray([1, 1, 1, 0, 0, 0, 0, 0], bool))
  out = steps.eval_step(state.params, {}, batch, model=model, num_classes=3)
  assert float(out["count"]) == 3 and float(out["top5"]) == 3  # 3 classes: top-5 always hits


def test_schedules():
  c = ml_collections.ConfigDict({"base_lr": 1.0, "decay": "cosine"})
  s = optim.make_schedule(c, total_steps=110, warmup_steps=10)
  assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0) and float(s(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(s(110)) == pytest.approx(0.0, abs=1e-6)
  c = ml_collections.ConfigDict({"base_lr": 1.0, "decay": "step", "boundaries": [0.5, 0.75],
                                 "decay_factor": 0.1})
  s = optim.make_schedule(c, total_steps=100, warmup_steps=0)
  assert [float(s(i)) for i in (49, 50, 74, 75)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
  with pytest.raises(ConfigError, match="Unknown config.schedule.decay"):
    optim.make_schedule(ml_collections.ConfigDict({"base_lr": 1.0, "decay": "cosin"}), 10, 0)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_weight_decay_skips_biases_and_norms(name):
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
            "norm": {"scale": jnp.ones((2,))}}
  c = ml_collections.ConfigDict({"name": name, "weight_decay": 0.5})
  tx = optim.make_optimizer(c, optax.constant_schedule(0.1))
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0.0
  assert float(jnp.abs(updates["norm"]["scale"]).max()) == 0.0
  assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0.0


def test_gradient_clipping():
  params = {"w": jnp.ones((3, 3))}
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      {"name": "sgd", "momentum": 0.0, "grad_clip_norm": 1.0}), optax.constant_schedule(1.0))
  updates, _ = tx.update({"w": jnp.full((3, 3), 10.0)}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_base_config_defaults_are_written_once():
  from vision_jax import config_base
  from vision_jax.config_util import load_config
  config = config_base.base_config()
  for key, value in config_base.TRAINER_DEFAULTS.items():
    assert key in config, key
  assert config.keep_checkpoints == config_base.TRAINER_DEFAULTS["keep_checkpoints"]
  config.init_from = "/some/dir"  # placeholders accept a value later (--config.init_from=...)
  config.optimizer.layer_decay = 0.8
  other = config_base.base_config()  # ... and each config has its own
  assert other.init_from is None and other.optimizer.layer_decay is None
  assert config_base.with_defaults(ml_collections.ConfigDict()).init_from is None
  # A hand-built config gets the same defaults; what it sets is kept.
  merged = config_base.with_defaults(ml_collections.ConfigDict({"seed": 3, "schedule": {"base_lr": 1.0}}))
  assert merged.seed == 3 and merged.fsdp is False and merged.dont_load == ("params/head/.*",)
  assert merged.schedule.base_lr == 1.0 and merged.schedule.decay == "cosine"
  assert merged.optimizer.name == "sgd"
  # Durations: one unit set, the others cleared.
  config_base.set_duration(config, "total", epochs=3)
  config_base.set_duration(config, "total", steps=7)
  assert config.total_steps == 7 and config.total_epochs is None
  with pytest.raises(ValueError, match="exactly one"):
    config_base.set_duration(config, "total", weeks=1)
  # Every config file builds on the base: a trainer field missing from one is a bug.
  digits = load_config("configs/digits.py")
  assert set(config_base.TRAINER_DEFAULTS) <= set(digits.keys())
