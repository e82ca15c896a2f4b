"""The two test tiers of tests/conftest.py: what the README's command leaves to `-m slow`."""

from types import SimpleNamespace

import pytest

from tests import conftest


def _config(markexpr="", args=("tests",)):
  deselected = []
  hook = SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items))
  return SimpleNamespace(option=SimpleNamespace(markexpr=markexpr), args=list(args),
                         hook=hook), deselected


class _Item(SimpleNamespace):
  def get_closest_marker(self, name):
    return name if name in self.marks else None


def _items():
  return [_Item(name="quick", marks=()), _Item(name="slow", marks=("slow",)),
          _Item(name="grouped", marks=("xdist_group",))]


def test_the_plain_command_leaves_the_slow_tier_out():
  config, deselected = _config()
  items = _items()
  conftest.pytest_collection_modifyitems(config, items)
  assert [i.name for i in items] == ["quick", "grouped"]
  assert [i.name for i in deselected] == ["slow"]


@pytest.mark.parametrize("markexpr,args", [
    ("slow", ("tests",)),                           # the slow tier
    ("not slow", ("tests",)),                       # any marker expression decides alone
    ("", ("tests/test_pretrained.py::test_digits_transfer_beats_scratch",)),  # named by id
])
def test_a_marker_expression_or_a_node_id_keeps_every_test(markexpr, args):
  config, deselected = _config(markexpr, args)
  items = _items()
  conftest.pytest_collection_modifyitems(config, items)
  assert len(items) == 3 and not deselected


def test_the_slow_marker_is_registered_and_the_summary_names_the_command():
  lines = []
  reporter = SimpleNamespace(write_line=lines.append)
  config, _ = _config()
  conftest.pytest_terminal_summary(reporter, config)
  assert lines and conftest.SLOW_COMMAND in lines[0]
  assert conftest.SLOW_COMMAND.endswith("-m slow")
  # Workers report nothing: the controller's summary says it once.
  lines.clear()
  config.workerinput = {}
  conftest.pytest_terminal_summary(reporter, config)
  assert not lines
  with open(f"{conftest.ROOT}/setup.cfg") as f:
    assert "\n    slow: " in f.read()
