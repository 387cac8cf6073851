"""A golden fixture (docs/reference.md §8): its JSON, weights, inputs/outputs, and a check ledger."""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
FLOAT_ATOL = 1e-5


def golden_dir() -> Path:
    """The fixture set under test: $METIS_GOLDEN_DIR when set, else the copy in tests/fixtures."""
    return Path(os.environ.get("METIS_GOLDEN_DIR", DEFAULT_DIR))


def load_index(root: Path | None = None) -> dict:
    root = root or golden_dir()
    return json.loads((root / "INDEX.json").read_text())


def is_input(name: str) -> bool:
    """Inputs and recorded noise are given to the model; everything else is an expected output."""
    # 'in.x0', 'in2.gt_code', 'noise.000.sample', 'fd2.in.prompt_len', 'run2.noise.001.choice'
    return re.search(r"(^|\.)(in\d*|noise)\.", name) is not None


@dataclass
class Fixture:
    name: str
    root: Path
    meta: dict
    files: dict[str, Path]
    io: dict[str, torch.Tensor]
    checked: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, name: str, root: Path | None = None) -> "Fixture":
        root = root or golden_dir()
        entry = load_index(root)["fixtures"][name]
        files = {kind: root / fname for kind, fname in entry["files"].items()}
        meta = json.loads((root / entry["json"]).read_text())
        return cls(name, root, meta, files, load_file(files["io"]))

    @property
    def config(self) -> dict:
        return self.meta["config"]

    def weights(self, kind: str = "weights") -> dict[str, torch.Tensor]:
        return load_file(self.files[kind])

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.io[key]

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """All io tensors under `prefix` (e.g. 'noise.' or 'run2.noise.'), in sorted (= call) order."""
        return {k: v for k, v in sorted(self.io.items()) if k.startswith(prefix)}

    def check(self, name: str, actual: torch.Tensor, atol: float = FLOAT_ATOL) -> None:
        """Compare with the recorded tensor: floats within atol, integers and bools exactly."""
        expected = self.io[name]
        actual = actual.detach().cpu()
        assert tuple(actual.shape) == tuple(expected.shape), f"{self.name}/{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        if expected.is_floating_point():
            err = (actual.float() - expected.float()).abs().max().item() if expected.numel() else 0.0
            assert err <= atol, f"{self.name}/{name}: max abs error {err:.3g} > {atol}"
        else:
            assert torch.equal(actual.to(expected.dtype), expected), f"{self.name}/{name}: integers differ\nexpected {expected}\nactual   {actual}"
        self.checked.add(name)

    def call(self, key: str) -> str:
        """The JSON's description of call `key` (a key of "calls", or the single "call")."""
        return self.meta["call"] if key == "call" else self.meta["calls"][key]

    def seed(self, key: str) -> int:
        """The torch.manual_seed(S) that the JSON says preceded call `key` (or `seed_set_right_before_call`)."""
        if key == "call":
            return int(self.meta["seed_set_right_before_call"])
        m = re.search(r"torch\.manual_seed\((\d+)\)", self.call(key))
        assert m, f"{self.name}: call {key!r} names no torch.manual_seed: {self.call(key)!r}"
        return int(m.group(1))

    def literal_args(self, key: str) -> dict:
        """The name=value arguments of call `key` whose values are Python literals (numbers, lists)."""
        found = re.findall(r"(\w+)=(\[[^\]]*\]|-?\d+(?:\.\d+)?(?:e-?\d+)?\b)", self.call(key))
        return {name: ast.literal_eval(value) for name, value in found}

    def outputs(self) -> set[str]:
        return {k for k in self.io if not is_input(k)}

    def unchecked(self) -> set[str]:
        return self.outputs() - self.checked
