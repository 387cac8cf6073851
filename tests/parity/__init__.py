"""Per-family checkers for the golden fixtures; `tests/test_reference_parity.py` drives them.

Each family module exposes CHECKERS = {fixture_name: fn(fx: Fixture) -> None}. A checker loads the
fixture's weights into this project's model (through the project's real loading path), runs the call
the fixture's JSON describes, and calls `fx.check(name, actual)` for every output tensor. The driver
fails when a listed fixture has no checker or when any output tensor of a fixture was not checked.
"""
