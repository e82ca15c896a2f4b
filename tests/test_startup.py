"""`import vision_jax` keeps Keras from loading with TensorFlow and clu's writers, and only then."""

import subprocess
import sys

from tests.conftest import ROOT  # noqa: E402  (the repository root)

_CHECK = r"""
import sys
import vision_jax
import tensorflow as tf
import clu.metric_writers
from tensorboard.plugins.hparams import api
print("after imports:", sorted(m for m in ("keras", "sklearn", "IPython") if m in sys.modules))
callback = api.KerasCallback(writer="/tmp", hparams={"lr": 0.1})  # the real class, on demand
print("callback:", type(callback).__module__, type(callback).__name__)
print("tf.keras:", tf.keras.layers.Dense.__name__, "keras.src.optimizers" in sys.modules)
print("hook left:", sys.modules.get("keras.src.optimizers") is None)
"""


def test_keras_is_deferred_until_asked_for():
  proc = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True,
                        cwd=ROOT, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines == ["after imports: []",
                   "callback: tensorboard.plugins.hparams._keras Callback",
                   "tf.keras: Dense True",
                   "hook left: False"], proc.stdout
