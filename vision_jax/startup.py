"""What `import vision_jax` arranges before the heavy libraries load: hooks on their first import.

`FirstImportHook` runs the first import of named modules inside a context manager
of our choosing; the module, its loader and its spec are otherwise the ones
Python would have used. Two users:

- `vision_jax.console` captures the native start-up lines of `import tensorflow`
  (see its module doc).
- `defer_keras` (here) keeps Keras from loading, which the project never uses.
  TensorFlow 2.16+ imports `keras.src.optimizers` eagerly at the end of its
  `__init__` (inside a try that accepts an ImportError), and clu's metric
  writers import TensorBoard's hparams API, whose `KerasCallback` subclasses
  `tf.keras.callbacks.Callback` at import time and so loads all of tf.keras,
  scikit-learn and IPython with it. On a 2-core CPU that was 3 of the 9 s of
  `import tensorflow` and 3 of the 3.3 s of `import clu.metric_writers` (`python
  -X importtime`), paid by every command, notebook kernel and test process.
  While TensorFlow is first imported, `keras.src.optimizers` is marked
  missing; while the hparams API is first imported, its Keras module is a stand-in
  whose `Callback` builds the real class's instance on first use. Both marks are
  removed once the import is done, so `import keras` or `tf.keras` afterwards
  loads Keras as usual (its optimizers register themselves then).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import sys
import types
from typing import Callable, ContextManager, Iterator, Mapping, Sequence

_TF_EAGER_KERAS = "keras.src.optimizers"
_HPARAMS_API = "tensorboard.plugins.hparams.api"
_HPARAMS_KERAS = "tensorboard.plugins.hparams._keras"


class FirstImportHook(importlib.abc.MetaPathFinder):
  """Runs the first import of each named module inside the context managers given for it.

  It finds the module with the other finders, then wraps that one spec's
  loader.exec_module; the first context manager given for a name is the outermost.
  """

  def __init__(self, wrappers: Mapping[str, Sequence[Callable[[], ContextManager]]]):
    self.wrappers = {name: list(factories) for name, factories in wrappers.items()}

  def find_spec(self, fullname, path, target=None):
    # Every lookup is answered (a library may probe with importlib.util.find_spec before
    # importing); once imported, the module is found in sys.modules and no lookup comes.
    factories = self.wrappers.get(fullname)
    if not factories:
      return None
    for finder in sys.meta_path:
      if isinstance(finder, FirstImportHook) or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(fullname, path, target)
      if spec is not None:
        break
    else:
      return None
    loader = spec.loader
    if loader is None or not hasattr(loader, "exec_module"):
      return spec
    execute = loader.exec_module

    def exec_module(module):
      with contextlib.ExitStack() as stack:
        for factory in factories:
          stack.enter_context(factory())
        execute(module)

    loader.exec_module = exec_module  # this loader instance serves this one module
    return spec


def wrap_first_import(name: str, factory: Callable[[], ContextManager]) -> None:
  """Runs the first import of module `name` inside `factory()`; nothing if it is imported already
  or `factory` is registered for it already. One hook on sys.meta_path serves every name."""
  if name in sys.modules:
    return
  hook = next((f for f in sys.meta_path if isinstance(f, FirstImportHook)), None)
  if hook is None:
    hook = FirstImportHook({})
    sys.meta_path.insert(0, hook)
  factories = hook.wrappers.setdefault(name, [])
  if factory not in factories:
    factories.append(factory)


class KerasCallback:
  """Stands in for TensorBoard's `hparams.api.KerasCallback` (see the module doc): making one
  loads Keras and gives an instance of the real class."""

  def __new__(cls, *args, **kwargs):
    real = importlib.import_module(_HPARAMS_KERAS).Callback
    return real(*args, **kwargs)


@contextlib.contextmanager
def _tensorflow_without_keras() -> Iterator[None]:
  if _TF_EAGER_KERAS in sys.modules:
    yield
    return
  sys.modules[_TF_EAGER_KERAS] = None  # `import` raises ImportError; TensorFlow catches it
  try:
    yield
  finally:
    if _TF_EAGER_KERAS in sys.modules and sys.modules[_TF_EAGER_KERAS] is None:
      del sys.modules[_TF_EAGER_KERAS]


@contextlib.contextmanager
def _hparams_without_keras() -> Iterator[None]:
  if _HPARAMS_KERAS in sys.modules:
    yield
    return
  stand_in = types.ModuleType(_HPARAMS_KERAS, "vision_jax.startup's stand-in (see its doc)")
  stand_in.Callback = KerasCallback
  sys.modules[_HPARAMS_KERAS] = stand_in
  try:
    yield
  finally:
    if sys.modules.get(_HPARAMS_KERAS) is stand_in:
      del sys.modules[_HPARAMS_KERAS]
    package = sys.modules.get(_HPARAMS_KERAS.rpartition(".")[0])
    if package is not None and getattr(package, "_keras", None) is stand_in:
      delattr(package, "_keras")


def defer_keras() -> None:
  """Keeps Keras from loading with TensorFlow and TensorBoard's hparams API (see the module doc)."""
  wrap_first_import("tensorflow", _tensorflow_without_keras)
  wrap_first_import(_HPARAMS_API, _hparams_without_keras)
