"""Checkpoint files and logs that survive kills: `.ckpt` written beside its name whatever $TMPDIR is, no
temporary file left behind, and a metrics.csv that keeps its history across resumes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from metis.lightning.training import train

_KILL_MID_WRITE = """
import os, signal, sys, torch
from metis.lightning.fault_tolerance import AtomicCheckpointIO

class KillWhilePickled:
    def __reduce__(self):  # runs in the middle of torch.save: the file is half written
        os.kill(os.getpid(), signal.SIGKILL)

io = AtomicCheckpointIO()
io.save_checkpoint({"global_step": 4, "w": torch.zeros(1000)}, sys.argv[1])
io.save_checkpoint({"global_step": 8, "w": torch.ones(1000), "kill": KillWhilePickled()}, sys.argv[1])
"""


def test_checkpoint_write_killed_midway_keeps_the_previous_file_and_no_temp_in_tmpdir(tmp_path):
    import subprocess
    import sys

    from metis.lightning.fault_tolerance import remove_stale_temporaries
    from tests.distributed.conftest import REPO, subprocess_env

    folder, tmpdir = tmp_path / "checkpoints", tmp_path / "elsewhere"
    tmpdir.mkdir()
    last = folder / "last.ckpt"
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE, str(last)], cwd=REPO, timeout=300,
                          env=subprocess_env(TMPDIR=str(tmpdir)), capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the complete previous checkpoint
    staged = [p for p in tmpdir.rglob("*") if p.is_file() and ("ckpt" in p.name or p.stat().st_size > 1000)]
    assert staged == []  # nothing of the checkpoint staged in $TMPDIR
    stale = [p for p in folder.iterdir() if p.name != "last.ckpt"]
    assert len(stale) == 1 and stale[0].name.startswith(".last.ckpt.")
    assert remove_stale_temporaries(folder) == stale and sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


def test_checkpoint_io_error_leaves_nothing_behind(tmp_path):
    from metis.lightning.fault_tolerance import AtomicCheckpointIO

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        AtomicCheckpointIO().save_checkpoint({"x": Unpicklable()}, tmp_path / "step1.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_metrics_csv_keeps_its_history_across_resumes(tiny_cfg):
    import csv

    first = train(tiny_cfg("trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=3"))
    metrics = Path(first["checkpoint_dir"]).parent / "csv" / "metrics.csv"
    before = list(csv.DictReader(metrics.open()))
    steps_before = sorted({int(r["step"]) for r in before if r.get("train/loss")})
    assert steps_before and max(steps_before) <= 6
    train(tiny_cfg("trainer.max_steps=10", "ckpt_path=last"))
    after = list(csv.DictReader(metrics.open()))
    train_steps = [int(r["step"]) for r in after if r.get("train/loss")]
    assert set(steps_before) <= set(train_steps)  # the first segment's rows are still there
    assert max(train_steps) > 6 and len(train_steps) == len(set(train_steps))  # continued, no step twice
    assert all(r["train/loss"] == a["train/loss"] for r in before for a in after
               if r.get("train/loss") and a["step"] == r["step"] and a.get("train/loss"))
