"""environment.json (vision_jax/environment.py) and tools/compare_runs.py."""

import json
import os

import jax
import pytest

from tests.conftest import tool_module
from vision_jax import config_util
from vision_jax import environment

from tests.conftest import ROOT  # noqa: E402  (the repository root)
DIGITS_CONFIG = os.path.join(ROOT, "configs", "digits.py")
# Every field issue 15 asks environment.json to hold, by dotted key.
REQUIRED_FIELDS = (
    "code.commit", "code.dirty", "packages.python", "packages.jax", "packages.jaxlib",
    "packages.flax", "packages.optax", "packages.tensorflow", "packages.numpy",
    "devices.device_kind", "devices.device_count", "devices.process_count", "cpu.model",
    "cpu.flags", "settings.XLA_FLAGS", "settings.env", "config.seed")


compare_runs = tool_module("compare_runs")


def _lookup(tree, dotted):
  for part in dotted.split("."):
    assert part in tree, f"environment.json lacks {dotted!r}"
    tree = tree[part]
  return tree


def _smoke_config(**changes):
  return config_util.load_config(DIGITS_CONFIG, "smoke", **changes)


def _fake_run(workdir, config, top1):
  """A workdir as a run leaves it: environment.json plus a train and an eval record."""
  environment.write_environment(str(workdir), config)
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write(json.dumps({"step": 4, "loss": 0.5, "learning_rate": 0.1, "steps_per_sec": 3.0})
            + "\n")
    f.write(json.dumps({"step": 4, "eval_top1": top1, "eval_loss": 0.25}) + "\n")


def test_environment_json_holds_every_field_and_is_written_atomically(tmp_path, monkeypatch):
  monkeypatch.setenv("OMP_NUM_THREADS", "3")
  path = environment.write_environment(str(tmp_path), _smoke_config(seed=7))
  assert path == str(tmp_path / "environment.json")
  assert os.listdir(tmp_path) == ["environment.json"]  # no temporary file left behind
  record = environment.read_environment(str(tmp_path))
  for field in REQUIRED_FIELDS:
    _lookup(record, field)
  assert record["config"]["seed"] == 7
  assert record["config"]["data"]["classes"] == list(range(10))  # tuples become lists
  assert record["settings"]["XLA_FLAGS"] == os.environ.get("XLA_FLAGS")
  assert record["settings"]["env"]["OMP_NUM_THREADS"] == "3"
  assert record["devices"]["device_count"] == jax.device_count()
  assert record["packages"]["jax"] == jax.__version__
  # This test runs from a git checkout: the commit is a full hash.
  assert record["code"]["commit"] is None or len(record["code"]["commit"]) == 40


def test_environment_outside_git_and_on_other_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(environment, "_git", lambda *args, **kwargs: None)
  assert environment.code_version()["commit"] is None
  assert environment.code_version()["dirty"] is None
  cpu = environment.cpu_info(str(tmp_path / "no_cpuinfo"))  # the platform fallback
  assert cpu["logical_cpus"] == os.cpu_count() and cpu["flags"] is None
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert environment.write_environment(str(tmp_path / "run"), {"seed": 0}) is None
  assert not os.path.exists(tmp_path / "run" / "environment.json")
  with pytest.raises(FileNotFoundError, match="environment.json"):
    environment.read_environment(str(tmp_path / "run"))


def test_compare_runs_shows_a_changed_seed_xla_flags_and_metric(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  _fake_run(tmp_path / "a", _smoke_config(), top1=0.9)
  _fake_run(tmp_path / "same", _smoke_config(), top1=0.9)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                     "--xla_cpu_max_isa=AVX2")
  _fake_run(tmp_path / "b", _smoke_config(seed=1), top1=0.8)

  assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "same")]) == 0
  assert capsys.readouterr().out == ""  # identical runs: nothing printed

  assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
  lines = capsys.readouterr().out.splitlines()
  assert "config.seed: 0 -> 1" in lines
  assert ('settings.XLA_FLAGS: "--xla_force_host_platform_device_count=8" -> '
          '"--xla_force_host_platform_device_count=8 --xla_cpu_max_isa=AVX2"') in lines
  assert "metrics.eval_top1: 0.9 -> 0.8" in lines
  assert len(lines) == 3, lines  # the train records and the run section are not compared

  assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
  assert "missing" in capsys.readouterr().err


@pytest.mark.xdist_group("digits_smoke")  # shares compiled programs: see conftest.py
def test_ci_size_trainer_run_writes_environment_json(digits_smoke_run):
  """A CI-size training run (configs/digits.py:smoke) leaves WORKDIR/environment.json."""
  # The plain smoke run with seed=3, shared with test_train (conftest.py).
  config = digits_smoke_run.config
  assert config.seed == 3 and config.total_steps == _smoke_config().total_steps
  record = environment.read_environment(str(digits_smoke_run.workdir))
  for field in REQUIRED_FIELDS:
    _lookup(record, field)
  assert record["config"]["seed"] == 3
  assert record["config"]["total_steps"] == config.total_steps
  assert record["devices"]["device_count"] == jax.device_count()
  assert record["config"]["num_devices"] is None  # None: all devices
