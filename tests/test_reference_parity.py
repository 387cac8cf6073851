"""Number-for-number parity with the reference implementation on every golden fixture.

The fixture set is $METIS_GOLDEN_DIR when set (other seeds and sizes of the same format must pass
too), else tests/fixtures/golden. Every listed fixture must have a checker, and every output tensor it
records must be checked: nothing is skipped.
"""

import importlib
import pkgutil

import pytest

import tests.parity as parity_pkg
from tests.parity.fixture import Fixture, load_index


def all_checkers() -> dict:
    checkers = {}
    for mod in pkgutil.iter_modules(parity_pkg.__path__):
        if mod.name == "fixture":
            continue
        module = importlib.import_module(f"tests.parity.{mod.name}")
        for name, fn in getattr(module, "CHECKERS", {}).items():
            assert name not in checkers, f"two checkers for fixture {name}"
            checkers[name] = fn
    return checkers


def check_fixture(name: str, root=None) -> None:
    """Run fixture `name` of the set at `root` (default: $METIS_GOLDEN_DIR or tests/fixtures/golden)
    through its checker; fail when it has none or leaves an output tensor unchecked."""
    checkers = all_checkers()
    assert name in checkers, f"golden fixture {name!r} has no parity checker"
    fx = Fixture.load(name, root)
    checkers[name](fx)
    missing = fx.unchecked()
    assert not missing, f"{name}: output tensors left unchecked: {sorted(missing)}"


FIXTURES = sorted(load_index()["fixtures"])


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture(name):
    check_fixture(name)
