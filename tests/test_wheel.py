"""A wheel built from the repo, installed into a fresh virtual environment outside the clone, carries the
`metis` command and its recipes: `metis train --cfg job` and a short demo run work from another folder.

The fresh environment reuses this one's installed packages through a .pth line (no torch download) but
not its editable `metis`: only the wheel's copy is importable there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(args, cwd, timeout=1200) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": ""})
    assert res.returncode == 0, f"{args}: {res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the wheel installed (no dependencies reinstalled)."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    src = tmp / "src"
    for f in files:  # a copy of the tracked tree: the build writes build/ and egg-info, not into the clone
        if (ROOT / f).is_file() and not f.startswith(("outputs/", "data/demo/")):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", "."], cwd=src)
    wheel = next((tmp / "dist").glob("metis-*.whl"))
    venv = tmp / "venv"
    sh([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    purelib = Path(sh([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
                   .stdout.strip())
    (purelib / "_reuse_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sh([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", wheel], cwd=tmp)
    return venv / "bin"


def test_wheel_carries_the_command_and_configs(installed, tmp_path):
    where = sh([installed / "python", "-c", "import metis.cli as c; print(c.__file__); print(c.config_root())"], cwd=tmp_path)
    module, configs = where.stdout.split()
    assert module.startswith(str(installed.parent)) and configs.startswith(str(installed.parent)), where.stdout
    assert (Path(configs) / "experiment" / "demo_se.yaml").is_file()
    assert "metis finetune" in sh([installed / "metis", "--help"], cwd=tmp_path).stdout
    job = sh([installed / "metis", "train", "--cfg", "job"], cwd=tmp_path).stdout
    assert "run_name: demo" in job and "ShardDataModule" in job


def test_wheel_runs_the_demo_outside_the_clone(installed, tmp_path):
    """`metis train` (the demo: corpus, tokenizer, pre-training, export) from an empty folder, shortened."""
    res = sh([installed / "metis", "train", "trainer.max_steps=20", "trainer.val_check_interval=10", "data.demo.n_synth=60",
              "trainer.limit_val_batches=2"], cwd=tmp_path)
    assert "validation loss: first" in res.stdout, res.stdout[-2000:]
    assert (tmp_path / "outputs" / "demo" / "export" / "model.safetensors").is_file()
    assert (tmp_path / "data" / "demo").is_dir() and (tmp_path / "outputs" / "demo" / "train.log").is_file()
