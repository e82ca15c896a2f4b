"""The package's layers (docs/architecture.md): no import circle, and train/ stays the engine."""

from tests.conftest import tool_module

check_layers = tool_module("check_layers")


def test_no_import_circle_under_vision_jax():
  edges = check_layers.graph()
  assert len(edges) > 50  # every module was read
  assert check_layers.circles(edges) == []
  # Also through the imports made inside functions (lazy ones): no module needs a later import
  # to break a circle.
  assert check_layers.circles(check_layers.graph(lazy=True)) == []


def test_train_imports_only_models_data_weights_and_config():
  assert check_layers.train_violations(check_layers.graph()) == []
  # train/ imports nothing of the benchmarks, the tools' package or inference.
  train_targets = {t for m, targets in check_layers.graph(lazy=True).items()
                   if m.startswith("vision_jax.train") for t in targets}
  assert not {t for t in train_targets
              if t.startswith(("vision_jax.bench", "vision_jax.cli", "vision_jax.inference",
                               "vision_jax.plots"))}


def test_the_check_finds_a_circle_and_a_layer_breach():
  edges = {"vision_jax.a": {"vision_jax.b"}, "vision_jax.b": {"vision_jax.a"},
           "vision_jax.train.x": {"vision_jax.plots"}, "vision_jax.plots": set()}
  assert check_layers.circles(edges) == [["vision_jax.a", "vision_jax.b"]]
  assert check_layers.train_violations(edges) == ["vision_jax.train.x -> vision_jax.plots"]
