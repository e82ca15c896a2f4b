"""Faults and bad input: one `error:` line per mistake, checkpoints that survive anything.

The command line is called in this process (`main.run_command`): each case
asserts the exit code, the single `error:` line and the absence of a traceback.

After every fault that a run survives, the console (file descriptors 1 and 2,
captured with capfd, since native code and Python's unraisable hook write there
directly) holds only the project's lines: `assert_quiet_console`. An exception
that Python could not raise (a coroutine or a callback left behind by orbax)
fails the test that caused it (the filterwarnings mark below).
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from vision_jax import config_check, console, main, startup
from vision_jax.config_util import ConfigError, load_config
from vision_jax.data import DatasetError

from tests.conftest import ROOT, xla_flags  # noqa: E402  (ROOT: the repository root)
DIGITS = os.path.join(ROOT, "configs", "digits.py")
TRANSFER = os.path.join(ROOT, "configs", "transfer.py")

# "Exception ignored in: <coroutine ...>" and "Event loop is closed" reach pytest as this
# warning: here it is an error, not a line in the summary.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv(main.VERBOSE_ENV, raising=False)
  monkeypatch.setattr(main, "_setup_logging", lambda verbose=False: None)  # keep pytest's logging


@pytest.fixture
def user_console():
  """`user_console(workdir)` sets up logging as `python -m vision_jax.main` does (the console
  filter, WORKDIR/run.log); undone at the end of the test."""
  setups = []

  def setup(workdir, verbose=False):
    logging_setup = console.configure_logging(verbose)
    console.add_log_file(logging_setup, str(workdir))
    setups.append(logging_setup)
    return logging_setup

  yield setup
  for logging_setup in reversed(setups):
    logging_setup.close()


def console_text(capfd):
  """Everything written to stdout and stderr (the file descriptors) since the last call."""
  captured = capfd.readouterr()
  return captured.out + captured.err


# A line of the project's log (absl's format names the file that logged it).
PROJECT_FILES = {name for _, _, names in os.walk(os.path.join(ROOT, "vision_jax"))
                 for name in names if name.endswith(".py")}


def log_line_file(line):
  match = re.match(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\] ", line)
  return match.group(1) if match else None


def assert_quiet_console(text, max_lines, clean_start=False):
  """The console after a handled fault: no traceback, nothing "ignored", no log line of a
  library, at most `max_lines` lines of at most 1,000 characters; with `clean_start`, the
  first line is the project's."""
  assert "Traceback" not in text, text
  assert "Exception ignored" not in text, text
  assert "never retrieved" not in text, text  # asyncio's report of an abandoned task
  lines = text.splitlines()
  assert len(lines) <= max_lines, (len(lines), text)
  assert all(len(line) <= 1000 for line in lines), text
  foreign = [line for line in lines if log_line_file(line) not in (None, *PROJECT_FILES)]
  assert not foreign, foreign
  if clean_start:
    assert lines and log_line_file(lines[0]) in PROJECT_FILES, text
  return lines


def cli(capsys, *args):
  """(exit code, stderr) of `python -m vision_jax.main ARGS`, run in this process."""
  capsys.readouterr()
  code = main.run_command(["vision_jax.main", *args])
  return code, capsys.readouterr().err


def error_of(code, err, expected_code):
  """The one `error:` line, after checking the exit code and that no traceback is printed."""
  assert code == expected_code, err
  assert "Traceback" not in err, err
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, err
  return lines[0]


def write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return str(path)


def png(path, value=90, size=16):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(str(path), tf.io.encode_png(np.full((size, size, 3), value, np.uint8)))


# ---------------------------------------------------------------------------
# The command line: one error path.
# ---------------------------------------------------------------------------
def test_command_line_mistakes_are_one_line(tmp_path, capsys):
  work = f"--workdir={tmp_path / 'work'}"
  raising = write(tmp_path / "raises.py", "def get_config(arg=None):\n  raise RuntimeError('boom')\n")
  broken = write(tmp_path / "broken.py", "def get_config(arg=None)\n  return 1\n")
  no_function = write(tmp_path / "empty.py", "x = 1\n")
  cases = [  # (args, exit code, what the line must say)
      (["--config=configs/does_not_exist.py", work], 2,
       "--config=configs/does_not_exist.py: there is no config file 'configs/does_not_exist.py'"),
      ([f"--config={raising}", work], 2, "get_config() raised RuntimeError: boom"),
      ([f"--config={broken}", work], 2, "has a syntax error at line 1"),
      ([f"--config={no_function}", work], 2, "defines no get_config()"),
      (["--config=configs/digits.py:no_such_key=3", work], 2,
       "Unknown config argument 'no_such_key' in 'no_such_key=3'. Valid arguments: smoke"),
      (["--config=configs/digits.py:epochs=many", work], 2,
       "Config argument epochs='many' is not a int"),
      (["--config=configs/digits.py:smoke", "--config.no_such_field=3", work], 2,
       "--config.no_such_field=3: the config has no field config.no_such_field; fields of config: "),
      (["--config=configs/digits.py:smoke", "--config.schedule.base_rl=3", work], 2,
       "the config has no field config.schedule.base_rl; fields of config.schedule: base_lr"),
      (["--config=configs/digits.py:smoke", "--config.batch_size=abc", work], 2,
       "flag --config.batch_size=abc: invalid literal for int()"),
      (["--config=configs/digits.py:smoke"], 2, "--workdir is missing"),
      ([work], 2, "--config is missing"),
      (["--config=configs/digits.py:smoke", "--bogus=1", work], 2,
       "Unknown command line flag 'bogus'"),
      (["--config=configs/digits.py:smoke", work, "stray"], 2, "unexpected arguments ['stray']"),
      (["--config=configs/digits.py:smoke", "--config.model.name=resnet_9000", work], 2,
       "Unknown model 'resnet_9000'"),
      (["--config=configs/digits.py:smoke", "--config.schedule.base_lr=-0.1", work], 2,
       "config.schedule.base_lr=-0.1: must be a number > 0"),
      (["--config=configs/digits.py:smoke", "--config.batch_size=12", work], 2,
       "config.batch_size=12 does not divide across 8 devices; use a multiple of 8"),
      (["--config=configs/digits.py:smoke", f"--config.init_from={tmp_path / 'nowhere'}", work], 2,
       f"config.init_from='{tmp_path / 'nowhere'}' does not exist"),
      (["--config=configs/digits.py:smoke", f"--workdir={raising}"], 2,
       f"--workdir={raising}: cannot create this directory (File exists)"),
      (["--config=configs/digits.py:smoke", "--coordinator_address=localhost:1", work], 2,
       "give all three of --coordinator_address, --num_processes and --process_id"),
  ]
  for args, expected_code, expected in cases:
    line = error_of(*cli(capsys, *args), expected_code)
    assert expected in line, (args, line)


def test_verbose_shows_the_traceback(tmp_path, capsys, monkeypatch):
  args = ["--config=configs/digits.py:smoke", "--config.schedule.base_lr=-0.1",
          f"--workdir={tmp_path}"]
  code, err = cli(capsys, *args, "--verbose")
  assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
  monkeypatch.setenv(main.VERBOSE_ENV, "1")
  code, err = cli(capsys, *args)
  assert code == 2 and "Traceback" in err


NATIVE_NOISE = [  # what `import tensorflow` writes to descriptor 2 (twice), from C++
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796397089.148292    5204 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors."]


def test_native_start_up_lines_go_to_the_log_file_and_the_rest_stays(tmp_path, capfd, monkeypatch):
  """The first import of a module wrapped in `native_stderr_captured` keeps absl's notice and native
  INFO lines off the console (into run.log); a native warning and Python's output stay."""
  kept = ["W0000 00:00:1796397089.2    5204 gpu.cc:1] a native warning stays",
          "a line from Python stays"]
  write(tmp_path / "noisy_native.py", "import os, sys\n" + "".join(
      f"os.write(2, {(line + chr(10)).encode()!r})\n" for line in NATIVE_NOISE + kept[:1]) +
        f"print({kept[1]!r}, file=sys.stderr)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(console, "startup_lines", [])
  hook = startup.FirstImportHook({"noisy_native": [console.native_stderr_captured]})
  monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
  import importlib.util  # pylint: disable=import-outside-toplevel
  console_text(capfd)
  try:
    assert importlib.util.find_spec("noisy_native") is not None  # libraries probe first
    importlib.import_module("noisy_native")
  finally:
    sys.modules.pop("noisy_native", None)
  # (sorted: under capfd, Python's sys.stderr is not descriptor 2, so the order differs)
  assert sorted(console_text(capfd).splitlines()) == sorted(kept)
  assert console.startup_lines == NATIVE_NOISE
  logging_setup = console.configure_logging()
  console.add_log_file(logging_setup, str(tmp_path))
  logging_setup.close()
  log = (tmp_path / console.LOG_FILE).read_text()
  assert all(f"[start-up, native] {line}" in log for line in NATIVE_NOISE), log


# ---------------------------------------------------------------------------
# Data sources that go wrong, through the command line.
# ---------------------------------------------------------------------------
def test_data_source_faults_are_one_line(tmp_path, capsys):
  def transfer(dataset, *extra):
    return [f"--config=configs/transfer.py:smoke,model=resnet18,dataset={dataset}",
            f"--workdir={tmp_path / 'work'}", *extra]

  empty = tmp_path / "empty"
  os.makedirs(empty / "train")
  no_images = tmp_path / "no_images"
  write(no_images / "train" / "cat" / "notes.txt", "not an image")
  no_eval = tmp_path / "no_eval"
  png(no_eval / "train" / "cat" / "a.png")
  unreadable = tmp_path / "unreadable"  # half of train cannot be decoded
  png(unreadable / "train" / "cat" / "good.png")
  write(unreadable / "train" / "dog" / "bad.png", "not a png at all")
  png(unreadable / "val" / "cat" / "good.png")
  bad_val = tmp_path / "bad_val"  # train is fine, no val image can be decoded
  for i in range(10):
    png(bad_val / "train" / "cat" / f"{i}.png")
  write(bad_val / "val" / "cat" / "bad.png", "not a png at all")
  tfds_dir = tmp_path / "tfds"
  from tests.test_data_pipeline import write_metadata  # pylint: disable=import-outside-toplevel
  write_metadata(tfds_dir / "prepared", "cifar10", {"train": 41, "test": 23})
  cases = [
      (transfer(f"folder:{tmp_path / 'nowhere'}"), 2, f"has no 'train' folder ({tmp_path}/nowhere/train)"),
      (transfer(f"folder:{empty}"), 2, f"No .jpg/.jpeg/.png files under {empty}/train"),
      (transfer(f"folder:{no_images}"), 2, f"No .jpg/.jpeg/.png files under {no_images}/train"),
      (transfer(f"folder:{no_eval}"), 1, f"Set config.data.eval_split: {no_eval} has none of the "
       "subfolders ('val', 'validation', 'test')"),
      (transfer(f"folder:{unreadable}"), 1, f"1 of 2 image files (50.0%) of split 'train' in "
       f"{unreadable} are unreadable, more than config.data.max_bad_fraction=0.1; the data looks "
       f"damaged (a failing disk or mount?). Repair it, or raise config.data.max_bad_fraction. "
       f"Unreadable: {unreadable}/train/dog/bad.png"),
      (transfer(f"folder:{bad_val}"), 1, f"The split folder {bad_val}/val has no readable images"),
      (transfer("cifar_ten", "--config.batch_size=8"), 2, "pass num_train=<training examples>"),
      # configs/transfer.py does not declare data.data_dir: the command line adds it.
      (transfer("cifar10", f"--config.data.data_dir={tfds_dir / 'empty'}"), 1,
       "The tfds dataset 'cifar10/3.0.2' is not prepared: tfds looked in"),
      (transfer("cifar10", f"--config.data.data_dir={tfds_dir / 'prepared'}",
                "--config.data.train_split=trian"), 1,
       "The tfds dataset 'cifar10' has no split 'trian'"),
      (["--config=configs/digits.py:smoke", "--config.data.name=cifar_ten",
        f"--workdir={tmp_path / 'work'}"], 1, "Unknown dataset 'cifar_ten' in config.data.name"),
      (transfer("cifar10", "--config.data.preprocess_train=decode|resise(32)"), 2,
       "Unknown preprocessing op 'resise'"),
  ]
  for args, expected_code, expected in cases:
    line = error_of(*cli(capsys, *args), expected_code)
    assert expected in line, (args, line)


# ---------------------------------------------------------------------------
# Config validation: every field of digits.py and transfer.py with a bad value.
# ---------------------------------------------------------------------------
DIGITS_BAD_VALUES = [  # (field, bad value, what the message says)
    ("seed", 1.5, "config.seed=1.5: must be an integer"),
    ("recipe", "supervized", "config.recipe='supervized': choose one of"),
    ("dtype", "float64", "config.dtype='float64': choose one of 'float32', 'bfloat16', 'float16'"),
    ("batch_size", 0, "config.batch_size=0: must be a positive integer"),
    ("eval_batch_size", -8, "config.eval_batch_size=-8: must be a positive integer"),
    ("num_devices", 0, "config.num_devices=0: must be a positive integer"),
    ("fsdp", "yes", "config.fsdp='yes': must be True or False"),
    ("grad_accum_steps", 0, "config.grad_accum_steps=0: must be a positive integer"),
    ("grad_accum_steps", 5, "config.batch_size=64 does not split into config.grad_accum_steps=5"),
    ("label_smoothing", 1.0, "config.label_smoothing=1.0: must be a number in [0, 1)"),
    ("ema_decay", 1.0, "config.ema_decay=1.0: must be a number in [0, 1)"),
    ("prefetch", 0, "config.prefetch=0: must be a positive integer"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0: must be a positive integer"),
    ("init_from", "/no/such/run", "config.init_from='/no/such/run' does not exist"),
    ("dont_load", ("params/head/(",), "config.dont_load[0]='params/head/(' is not a valid regular"),
    ("zero_init_head", "no", "config.zero_init_head='no': must be True or False"),
    ("freeze_bn", 1, "config.freeze_bn=1: must be True or False"),
    ("trainable_params", "head/[", "config.trainable_params='head/[' is not a valid regular"),
    ("total_epochs", 0.0, "config.total_epochs=0.0: must be a number > 0"),
    ("total_steps", 100, "Set only one of config.total_steps, config.total_epochs"),
    ("log_every_steps", 0, "config.log_every_steps=0: must be a positive integer"),
    ("eval_every_steps", -1, "config.eval_every_steps=-1: must be a positive integer"),
    ("checkpoint_every_steps", 0, "config.checkpoint_every_steps=0: must be a positive integer"),
    ("on_corrupt_checkpoint", "ignore", "config.on_corrupt_checkpoint='ignore': choose one of "
     "'stop', 'restart'"),
    ("model.name", "resnet_9000", "config.model: Unknown model 'resnet_9000'"),
    ("model.overrides", {"no_such_field": 1}, "unknown override(s) ['no_such_field']"),
    ("schedule.base_lr", 0.0, "config.schedule.base_lr=0.0: must be a number > 0"),
    ("schedule.base_lr", float("nan"), "config.schedule.base_lr=nan: must be a number > 0"),
    ("schedule.decay", "cosin", "Unknown config.schedule.decay 'cosin'; choose one of ('cosine'"),
    ("schedule.warmup_epochs", 31.0, "config.schedule.warmup_epochs=31.0 is longer than the run "
     "(config.total_epochs=30.0)"),
    ("schedule.warmup_epochs", -1.0, "config.schedule.warmup_epochs=-1.0: must be a number >= 0"),
    ("optimizer.name", "adamx", "Unknown optimizer 'adamx' in config.optimizer.name; choose one "
     "of ('sgd', 'adamw'"),
    ("optimizer.weight_decay", -1e-4, "config.optimizer.weight_decay=-0.0001: must be a number >= 0"),
    ("optimizer.momentum", 1.0, "config.optimizer.momentum=1.0: must be a number in [0, 1)"),
    ("optimizer.nesterov", "true", "config.optimizer.nesterov='true': must be True or False"),
    ("optimizer.lr_mults", [("head/(", 1.0)], "config.optimizer.lr_mults[0][0]='head/(' is not a "
     "valid regular"),
    ("optimizer.lr_mults", [("head/.*",)], "config.optimizer.lr_mults[0]=('head/.*',): must be a "
     "pair (regex, multiplier >= 0)"),
    ("data.name", "", "config.data.name='': must name a dataset"),
    ("data.image_size", 0, "config.data.image_size=0: must be a positive integer"),
    ("data.max_shift", -1, "config.data.max_shift=-1: must be an integer >= 0"),
    ("data.classes", (1, 1), "config.data.classes=[1, 1]: give distinct digits from 0 to 9"),
    ("data.train_per_class", 0, "config.data.train_per_class=0: must be a positive integer"),
    ("data.max_bad_fraction", 1.5, "config.data.max_bad_fraction=1.5: must be a number in [0, 1]"),
]

TRANSFER_BAD_VALUES = [
    ("dtype", "bf16", "config.dtype='bf16': choose one of"),
    ("batch_size", -16, "config.batch_size=-16: must be a positive integer"),
    ("total_steps", 0, "config.total_steps=0: must be a positive integer"),
    ("schedule.warmup_steps", 3, "config.schedule.warmup_steps=3 is longer than the run "
     "(config.total_steps=2)"),
    ("schedule.boundaries", (0.6, 0.3), "config.schedule.boundaries=(0.6, 0.3): must be increasing "
     "fractions of the run in (0, 1)"),
    ("schedule.decay_factor", -0.1, "config.schedule.decay_factor=-0.1: must be a number > 0"),
    ("schedule.decay", "exponential", "config.schedule.decay_every is not set"),
    ("optimizer.grad_clip_norm", 0.0, "config.optimizer.grad_clip_norm=0.0: must be a number > 0"),
    ("data.name", "folder:/no/such/folder", "the folder /no/such/folder does not exist"),
    ("data.preprocess_train", "decode|resise(32)", "Unknown preprocessing op 'resise'"),
    ("data.preprocess_eval", 224, "config.data.preprocess_eval=224: must be a string"),
    ("data.mix", "mixup(0.1", "config.data.mix='mixup(0.1': Unclosed bracket"),
    ("data.shuffle_buffer", 0, "config.data.shuffle_buffer=0: must be a positive integer"),
    ("data.validate_files", "fast", "config.data.validate_files='fast': choose one of"),
    ("model.name", "resnet_18", "config.model: Unknown model 'resnet_18'"),
    ("eval_every_steps", 0, "config.eval_every_steps=0: must be a positive integer"),
    ("eval_batch_size", 0, "config.eval_batch_size=0: must be a positive integer"),
]


def with_field(config, field, value):
  """A copy of `config` with `field` set to `value`, whatever its declared type."""
  import copy  # pylint: disable=import-outside-toplevel
  config = copy.deepcopy(config)
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[leaf] = value
  return config


def test_every_field_with_a_bad_value_is_named():
  from vision_jax import data  # pylint: disable=import-outside-toplevel
  for path, arg, table in ((DIGITS, None, DIGITS_BAD_VALUES),
                           (TRANSFER, "smoke,model=resnet18", TRANSFER_BAD_VALUES)):
    good = load_config(path, arg)
    config_check.validate(good)
    for field, value, expected in table:
      config = with_field(good, field, value)
      with pytest.raises((ConfigError, DatasetError)) as raised:
        config_check.validate(config)
        data.get_dataset(config.data)  # what only the data source can check
      assert expected in str(raised.value), (field, value, str(raised.value))


def test_validate_works_on_plain_config_dicts():
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({
      "model": {"name": "cifar_resnet20"}, "data": {"name": "digits"}, "batch_size": 16,
      "total_steps": 10, "schedule": {"base_lr": 0.1, "warmup_steps": 2},
      "optimizer": {"name": "sgd"}})
  config_check.validate(config)
  config_check.validate(with_field(config, "schedule.warmup_steps", 10))  # all warmup: allowed
  with pytest.raises(ConfigError, match=r"config.schedule.warmup_steps=11 is longer than the run"):
    config_check.validate(with_field(config, "schedule.warmup_steps", 11))
  with pytest.raises(ConfigError, match=r"config.schedule.warmup_examples=161 is longer"):
    config_check.validate(with_field(with_field(config, "schedule.warmup_steps", None),
                                     "schedule.warmup_examples", 161))
  with pytest.raises(ConfigError, match=r"The run has no length"):
    config_check.validate(with_field(config, "total_steps", None))
  with pytest.raises(ConfigError, match=r"config.batch_size is not set"):
    config_check.validate(with_field(config, "batch_size", None))
  with pytest.raises(ConfigError, match=r"The warmup \(13 steps\) is longer than the run"):
    config_check.check_lengths(12, 13)


# ---------------------------------------------------------------------------
# Checkpoints: damage, a full disk, two runs on one workdir.
# ---------------------------------------------------------------------------
META = {"model": "tiny", "num_classes": 3}


def tiny_state(scale=1.0, width=4):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return {"params": {"w": jnp.full((width, 3), scale), "b": jnp.zeros((3,))},
          "step": jnp.asarray(int(scale), jnp.int32)}


def abstract(state):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def saved_workdir(path, steps=(1, 2, 3)):
  from vision_jax.train.checkpoint import Checkpointer  # pylint: disable=import-outside-toplevel
  checkpointer = Checkpointer(str(path), max_to_keep=5, async_save=False)
  for step in steps:
    checkpointer.save(step, tiny_state(step), META)
  checkpointer.close()
  return path


def damage(step_dir):
  """Truncates every data file of a saved state (what a crashed copy or a bad disk leaves)."""
  for directory, _, names in os.walk(os.path.join(step_dir, "state")):
    for name in names:
      path = os.path.join(directory, name)
      if os.sep + "d" + os.sep in path + os.sep or name == "manifest.ocdbt":
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)


def test_corrupt_checkpoint_is_named_moved_aside_and_the_previous_one_used(tmp_path, caplog, capfd,
                                                                           user_console):
  from vision_jax.train import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  work = saved_workdir(tmp_path / "run")
  damage(work / "checkpoints" / "3")
  user_console(work)
  console_text(capfd)
  checkpointer = ckpt.Checkpointer(str(work), max_to_keep=5, async_save=False)
  with pytest.raises(ckpt.CorruptCheckpointError) as raised:
    checkpointer.restore(abstract(tiny_state()), META, step=3)
  message = str(raised.value)
  assert message.startswith("The checkpoint at step 3 is unreadable or corrupt: ")
  assert str(work / "checkpoints" / "3" / "state") in message and "does not fit" not in message
  with caplog.at_level("WARNING"):
    state = checkpointer.restore_newest_readable(abstract(tiny_state()), META)
  assert int(state["step"]) == 2 and float(state["params"]["w"][0, 0]) == 2.0
  assert checkpointer.all_steps() == [1, 2]
  assert os.listdir(work / "checkpoints_corrupt") == ["3"]  # moved, not deleted
  assert "step 3 is unreadable or corrupt" in caplog.text and "Resumed from step 2" in caplog.text
  # A structure mismatch keeps its own message.
  with pytest.raises(ckpt.CheckpointMismatchError, match=r"does not fit this config's train "
                     r"state: params/w is \(4, 3\) in the checkpoint, \(5, 3\) here"):
    checkpointer.restore(abstract(tiny_state(width=5)), META, step=2)
  with pytest.raises(ckpt.CheckpointMismatchError, match="different model"):
    checkpointer.restore(abstract(tiny_state()), dict(META, model="other"), step=2)
  checkpointer.close()
  # The console: one warning for the damaged step, one for the resume; the reads that the
  # failed restores left in flight (of step 3, and of step 2 in the other shape) were
  # settled, so nothing is reported after the fact. The detail is in the log file.
  lines = assert_quiet_console(console_text(capfd), max_lines=2)
  assert "The checkpoint at step 3 is unreadable or corrupt" in lines[0], lines
  assert "Resumed from step 2" in lines[1], lines
  log = (work / console.LOG_FILE).read_text()
  assert "Why the checkpoint at step 3 cannot be read" in log and "Traceback" in log, log


def test_no_readable_checkpoint_left_stops_unless_restart_is_asked(tmp_path, capfd, user_console):
  from vision_jax.train import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  work = saved_workdir(tmp_path / "run", steps=(1, 2))
  damage(work / "checkpoints" / "2")
  os.remove(work / "checkpoints" / "1" / "meta" / "metadata")
  user_console(work)
  console_text(capfd)
  checkpointer = ckpt.Checkpointer(str(work), async_save=False)
  with pytest.raises(ckpt.CorruptCheckpointError) as raised:
    checkpointer.restore_newest_readable(abstract(tiny_state()), META)
  assert "No readable checkpoint is left: the damaged step(s) [2, 1] were moved to" in str(raised.value)
  assert "--config.on_corrupt_checkpoint=restart" in str(raised.value)
  assert sorted(os.listdir(work / "checkpoints_corrupt")) == ["1", "2"]
  checkpointer.close()
  lines = assert_quiet_console(console_text(capfd), max_lines=2)  # one warning per damaged step
  assert "step 2 is unreadable" in lines[0] and "step 1 is unreadable" in lines[1], lines
  # With --verbose, the console also shows why (orbax's and TensorStore's errors).
  work = saved_workdir(tmp_path / "again", steps=(1,))
  damage(work / "checkpoints" / "1")
  user_console(work, verbose=True)
  checkpointer = ckpt.Checkpointer(str(work), async_save=False)
  assert checkpointer.restore_newest_readable(abstract(tiny_state()), META, "restart") is None
  assert checkpointer.latest_step() is None
  checkpointer.close()
  verbose = console_text(capfd)
  assert "Why the checkpoint at step 1 cannot be read" in verbose and "Traceback" in verbose
  assert "Exception ignored" not in verbose and "never retrieved" not in verbose, verbose


def test_full_disk_during_save_names_the_disk_and_keeps_the_previous_checkpoint(tmp_path,
                                                                                monkeypatch, capfd):
  # The error is injected where orbax's background thread finishes a save (writing its
  # commit file before the atomic rename), as a disk that fills up during the save would.
  from orbax.checkpoint._src.path import async_path  # pylint: disable=import-outside-toplevel
  from vision_jax.train import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  checkpointer = ckpt.Checkpointer(str(tmp_path), async_save=True)
  checkpointer.save(1, tiny_state(1), META)
  checkpointer.wait()

  async def full_disk(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

  monkeypatch.setattr(async_path, "write_text", full_disk)
  with pytest.raises(ckpt.CheckpointSaveError) as raised:
    checkpointer.save(2, tiny_state(2), META)
    checkpointer.wait()
  message = str(raised.value)
  assert message.startswith(f"No space left on the disk while saving step 2 to {tmp_path}/checkpoints "
                            "(filesystem /"), message
  assert "GiB free of" in message and "The previous checkpoint (step 1) is intact" in message
  monkeypatch.undo()
  checkpointer.close()
  reopened = ckpt.Checkpointer(str(tmp_path), async_save=False)
  assert reopened.all_steps() == [1]
  assert int(reopened.restore(abstract(tiny_state()), META)["step"]) == 1
  reopened.close()
  assert_quiet_console(console_text(capfd), max_lines=0)


def test_second_run_on_a_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path, capfd,
                                                                        user_console):
  from vision_jax.train import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  lock_path = tmp_path / ckpt.LOCK_FILE
  user_console(tmp_path)
  holder = hold_lock(tmp_path)
  try:
    with pytest.raises(ckpt.WorkdirLockedError) as raised:
      ckpt.Checkpointer(str(tmp_path), lock=True)
    assert f"is in use by another run: process {holder.pid} on here" in str(raised.value)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The holder died without cleaning up: its lock file names it, but nobody holds the lock.
  assert json.loads(lock_path.read_text())["pid"] == holder.pid
  console_text(capfd)
  checkpointer = ckpt.Checkpointer(str(tmp_path), lock=True)
  assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  checkpointer.close()
  lines = assert_quiet_console(console_text(capfd), max_lines=1)
  assert f"Taking over the lock of {lock_path} from process {holder.pid}" in lines[0], lines
  # A run that ends normally leaves the lock empty: the next one has nobody to take over from.
  assert lock_path.read_text() == ""
  ckpt.Checkpointer(str(tmp_path), lock=True).close()
  assert_quiet_console(console_text(capfd), max_lines=0)


def hold_lock(workdir):
  """A process that holds `workdir`'s lock (as a live run does) until it is killed."""
  from vision_jax.train import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  holder = subprocess.Popen([sys.executable, "-c", (
      "import fcntl, json, os, sys, time\n"
      f"fd = os.open({os.path.join(str(workdir), ckpt.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
      "fcntl.flock(fd, fcntl.LOCK_EX)\n"
      "os.ftruncate(fd, 0)\n"
      "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'here'}).encode())\n"
      "print('locked', flush=True)\n"
      "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  return holder


@pytest.mark.xdist_group("digits_smoke")  # shares compiled programs: see conftest.py
def test_trainer_falls_back_to_the_newest_readable_checkpoint_and_respects_the_lock(
    tmp_path, caplog, capfd, user_console):
  from vision_jax.train import checkpoint as ckpt, trainer  # pylint: disable=import-outside-toplevel
  config = load_config(DIGITS, "smoke")  # checkpoints at steps 2 and 4
  work = tmp_path / "run"
  user_console(work)  # the console of `python -m vision_jax.main`
  console_text(capfd)
  first = trainer.train_and_evaluate(config, str(work))
  # A clean run: the project's lines from the first one (the parameter table: about 70
  # lines, then one per logged step and evaluation).
  steps = config.total_steps // config.log_every_steps
  assert_quiet_console(console_text(capfd), max_lines=100 + 2 * steps, clean_start=True)
  damage(work / "checkpoints" / "4")
  with caplog.at_level("WARNING"):
    second = trainer.train_and_evaluate(config, str(work))
  assert second == first  # resumed from step 2, bitwise the same end
  assert "The checkpoint at step 4 is unreadable or corrupt" in caplog.text
  assert "Resumed from step 2" in caplog.text
  assert os.listdir(work / "checkpoints_corrupt") == ["4"]
  # Two warnings about the damaged step, the resume, the progress of steps 3-4, the end.
  lines = assert_quiet_console(console_text(capfd), max_lines=12)
  assert sum("step 4 is unreadable" in line for line in lines) == 1, lines
  assert (work / console.LOG_FILE).read_text().count("Why the checkpoint at step 4 cannot be read") == 1
  for step in ckpt.Checkpointer(str(work), async_save=False).all_steps():
    damage(work / "checkpoints" / str(step))
  with pytest.raises(ckpt.CorruptCheckpointError, match="No readable checkpoint is left"):
    trainer.train_and_evaluate(config, str(work))
  # The run stops (main prints one `error:` line); before it, one warning per damaged step.
  assert_quiet_console(console_text(capfd), max_lines=2)
  holder = hold_lock(work)
  try:
    with pytest.raises(ckpt.WorkdirLockedError, match=f"in use by another run: process {holder.pid}"):
      trainer.train_and_evaluate(config, str(work))
  finally:
    holder.kill()
    holder.wait()
  assert_quiet_console(console_text(capfd), max_lines=0)


# ---------------------------------------------------------------------------
# Data faults during a run.
# ---------------------------------------------------------------------------
def small_folder(root, per_class=8):
  """train: 3 classes x `per_class` PNGs (value = class*50 + i); val: 4 per class."""
  for split, count in (("train", per_class), ("val", 4)):
    for label, name in enumerate(["ant", "bee", "cat"]):
      for i in range(count):
        png(root / split / name / f"{i}.png", value=label * 50 + i, size=8)
  return root


def folder_dataset(root, **fields):
  from vision_jax import data  # pylint: disable=import-outside-toplevel
  return data.get_dataset({"name": f"folder:{root}", "preprocess_train": "decode",
                           "preprocess_eval": "decode", **fields})


def test_files_that_become_unreadable_mid_run_are_skipped_counted_and_named(tmp_path, caplog, capfd,
                                                                           user_console):
  root = small_folder(tmp_path / "images")
  user_console(tmp_path)
  console_text(capfd)
  ds = folder_dataset(root)
  batches = ds.train_iterator(6, seed=0)
  for _ in range(2):
    next(batches)
  deleted, truncated = root / "train" / "bee" / "3.png", root / "train" / "cat" / "5.png"
  os.remove(deleted)
  data = truncated.read_bytes()
  time.sleep(0.01)
  truncated.write_bytes(data[:len(data) // 2])
  with caplog.at_level("WARNING"):
    later = [next(batches) for _ in range(12)]  # three epochs: every file is read again
  assert all(b["image"].shape == (6, 8, 8, 3) for b in later)
  assert ds.source.unreadable_files == [str(deleted), str(truncated)]
  assert "2 image file(s) of split 'train' became unreadable during the run" in caplog.text
  assert str(deleted) in caplog.text and str(truncated) in caplog.text
  assert "(2 of 24 files of the split unreadable so far)" in caplog.text
  # On the console: the warning, which lists the two files on lines of their own; nothing
  # from tf.data.
  lines = assert_quiet_console(console_text(capfd), max_lines=3)
  assert "became unreadable during the run" in lines[0] and str(truncated) in lines[2], lines
  # Evaluation rechecks its split before each pass.
  os.remove(root / "val" / "ant" / "0.png")
  counted = sum(int(b["mask"].sum()) for b in ds.eval_iterator(4))
  assert counted == 11
  # Above config.data.max_bad_fraction, the run stops and says why.
  strict = folder_dataset(root, max_bad_fraction=0.1)  # 23 files listed, 1 undecodable: 4.3%
  batches = strict.train_iterator(6, seed=0)
  next(batches)
  for name in ("0.png", "1.png"):
    os.remove(root / "train" / "ant" / name)
  with pytest.raises(DatasetError) as raised:
    for _ in range(12):
      next(batches)
  assert str(raised.value).startswith(
      f"3 of 23 image files (13.0%) of split 'train' in {root} are unreadable, more than "
      "config.data.max_bad_fraction=0.1; the data looks damaged")


# ---------------------------------------------------------------------------
# SIGKILL at any moment.
# ---------------------------------------------------------------------------
def start_main(args, log_path, devices=2):
  """`python -m vision_jax.main ARGS` in the background, its console (stdout and stderr) in
  `log_path`."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices), PYTHONPATH=ROOT,
             # Compiled steps are shared through a cache: each restart skips the compilation.
             JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(log_path), "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop(main.VERBOSE_ENV, None)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest.py sets it: the console a user sees is checked
  with open(log_path, "a") as log:
    return subprocess.Popen([sys.executable, "-m", "vision_jax.main", *args], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f if line.strip() and '"loss"' in line]


def final_eval(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [json.loads(line) for line in f if '"eval_top1"' in line]
  return evals[-1]


def wait_for(condition, process, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if condition():
      return True
    time.sleep(0.02)
  return False


@pytest.mark.slow
def test_sigterm_and_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
  """SIGTERM (a preemption notice) saves and exits 0; SIGKILL at any moment loses at most the
  steps since the last save; either way the resumed run ends bitwise where an uninterrupted
  one does. Then the newest checkpoint is damaged: the run says so in a few lines, resumes
  from the one before and ends the same. The console of every run is checked."""
  import random  # pylint: disable=import-outside-toplevel
  # Enough steps that the SIGTERM run cannot finish between two polls on a loaded machine.
  total = 30
  flags = ["--config=configs/digits.py:smoke", f"--config.total_steps={total}",
           "--config.log_every_steps=1", "--config.eval_every_steps=1000"]
  every_step = ["--config.checkpoint_every_steps=1"]
  logs = []

  def start(args):
    """start_main with a console log of its own (stdout and stderr), kept in `logs`."""
    logs.append(str(tmp_path / f"console_{len(logs)}.log"))
    return start_main(args, logs[-1])

  def tail():
    return open(logs[-1]).read()[-3000:]

  # The uninterrupted run saves only at the end (an orbax save costs about 0.4 CPU s on this
  # state): the interrupted runs below save every step, so the comparison also shows that
  # how often a run saves does not change what it computes.
  reference = start(flags + ["--config.checkpoint_every_steps=1000",
                             f"--workdir={tmp_path / 'reference'}"])
  # Run to the end first: it fills the compilation cache that the five runs below then read
  # (two processes started together would both compile).
  assert reference.wait(timeout=300) == 0, tail()
  # A clean run's console: the project's lines from the first one (the parameter table,
  # about 70 lines, then one line per step, the final eval), at most 100 + 2 per step.
  assert_quiet_console(open(logs[-1]).read(), max_lines=100 + 2 * total, clean_start=True)
  workdir = str(tmp_path / "killed")

  # SIGTERM with no periodic checkpoint due: the handler itself must save the step it reached.
  process = start(flags + ["--config.checkpoint_every_steps=1000", f"--workdir={workdir}"])
  assert wait_for(lambda: len(logged_steps(workdir)) >= 1, process), tail()
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == 0, tail()
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert len(saved) == 1 and 1 <= saved[0] < total, ("the signal must stop the run mid-way", saved)
  assert saved[0] == max(logged_steps(workdir)), (saved, logged_steps(workdir))

  rng = random.Random(13)
  kills = []
  # A checkpoint is written every step, so a step or an asynchronous save is always in
  # flight: twice during training, then once the last step is logged (the final eval or
  # the final save).
  for moment in ("training", "training", "final eval"):
    before = len(logged_steps(workdir))
    process = start(flags + every_step + [f"--workdir={workdir}"])
    if moment == "training":
      reached = wait_for(lambda: len(logged_steps(workdir)) > before, process)
      time.sleep(rng.uniform(0.0, 0.3))
    else:
      reached = wait_for(lambda: total in logged_steps(workdir), process)
      time.sleep(rng.uniform(0.0, 0.05))
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert reached or alive, f"the run ended before it could be killed; see {logs[-1]}"
    kills.append((moment, alive, max(logged_steps(workdir), default=0)))
  assert sum(alive for _, alive, _ in kills) >= 2, kills
  resumed = start(flags + every_step + [f"--workdir={workdir}"])
  assert resumed.wait(timeout=240) == 0, tail()
  assert final_eval(workdir) == final_eval(tmp_path / "reference"), kills  # bitwise on the CPU
  # Every step's loss, as last logged (a step redone after a kill logs again), is the reference's.
  def loss_by_step(directory):
    with open(os.path.join(directory, "metrics.jsonl")) as f:
      return {m["step"]: m["loss"] for m in map(json.loads, f) if "loss" in m}
  assert loss_by_step(workdir) == loss_by_step(tmp_path / "reference"), kills
  assert sorted(loss_by_step(workdir)) == list(range(1, total + 1))
  assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt")), kills
  # The consoles of the signalled and resumed runs: the project's lines only (a run started
  # after a SIGKILL says in one line that it takes over the dead run's lock).
  for path in logs[1:]:
    text = open(path).read()
    assert_quiet_console(text, max_lines=100 + 2 * total)
    assert text.count("Taking over the lock") <= 1, text

  # The reproduction: the newest checkpoint damaged (three of its files garbled),
  # rerun the same command. A few lines about the damaged step, then the normal progress,
  # exit 0, the same end.
  newest = os.path.join(workdir, "checkpoints", str(total))
  garbled = sorted(os.path.join(d, n) for d, _, names in os.walk(newest) for n in names
                   if os.path.getsize(os.path.join(d, n)) > 1024)[:3]
  assert garbled, os.listdir(newest)
  for path in garbled:
    with open(path, "w") as f:
      f.write("garbage")
  again = start(flags + every_step + [f"--workdir={workdir}"])
  assert again.wait(timeout=240) == 0, tail()
  # Two warnings (the damaged step, the resume), the trainer's "Resumed" line, step 30's
  # progress line, the final eval (two lines): 6, and at most 8.
  lines = assert_quiet_console(open(logs[-1]).read(), max_lines=8)
  assert sum(f"checkpoint at step {total} is unreadable" in line for line in lines) == 1, lines
  assert any(f"Resumed from step {total - 1}" in line for line in lines), lines
  assert final_eval(workdir) == final_eval(tmp_path / "reference")
  assert os.listdir(os.path.join(workdir, "checkpoints_corrupt")) == [str(total)]
  run_log = open(os.path.join(workdir, console.LOG_FILE)).read()
  assert f"Why the checkpoint at step {total} cannot be read" in run_log, run_log[-3000:]
