"""Shared pieces of the distributed tests: compose the real config (tests/lightning/conftest.py), run
`train.py` in a subprocess, and the TEST-ONLY CPU DeepSpeed strategy.

`CPUDeepSpeedStrategy` exists only so that DeepSpeed's ZeRO code paths (sharded optimizer state,
partitioned parameters, checkpoint folders) can be exercised on CPU processes over gloo. Lightning's
DeepSpeedStrategy refuses non-CUDA accelerators in `setup_environment`; this subclass skips that
check and gives each process an indexed CPU device. Never use it for real training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from tests.lightning.conftest import TINY, compose_train  # noqa: F401  (re-exported for the tests here)

REPO = Path(__file__).resolve().parents[2]


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """TEST ONLY: DeepSpeedStrategy on CPU processes (set DS_ACCELERATOR=cpu before importing deepspeed)."""

    def setup_environment(self) -> None:
        self.parallel_devices = [torch.device("cpu", i) for i in range(len(self.parallel_devices))]
        DDPStrategy.setup_environment(self)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}", DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def tiny_with(overrides) -> list[str]:
    """The TINY overrides minus those that `overrides` set again (a group such as data= may be given once)."""
    given = {o.split("=")[0] for o in overrides}
    return [o for o in TINY if o.split("=")[0] not in given] + list(overrides)


def train_cmd(root: Path, run_name: str, *overrides: str) -> list[str]:
    """`python train.py` with the tiny model on synthetic tokens (the TINY overrides) under `root`."""
    tiny = [o for o in tiny_with(overrides) if not o.startswith("logger=") and o not in overrides]
    return [sys.executable, str(REPO / "train.py"), *tiny, "logger=none", f"paths.root_dir={root}",
            f"run_name={run_name}", *overrides]


def run_train(root: Path, run_name: str, *overrides: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(root, run_name, *overrides), cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def deepspeed_overrides(stage: int, devices: int, offload: bool = False) -> list[str]:
    """Hydra overrides selecting trainer=deepspeed_stage_N but on CPU processes through the test-only strategy."""
    name = f"deepspeed_stage_{stage}" + ("_offload" if offload else "")
    return [f"trainer={name}", "trainer.accelerator=cpu", f"trainer.devices={devices}", "trainer.precision=32-true",
            "trainer.strategy._target_=tests.distributed.conftest.CPUDeepSpeedStrategy"]


@pytest.fixture
def tiny_cfg(tmp_path):
    return lambda *extra: compose_train(tiny_with(extra), root=tmp_path)
