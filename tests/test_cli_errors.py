"""One error style for every CLI: a user error is one line naming the file / field, exit status 2; the
traceback only with --debug (HYDRA_FULL_ERROR=1 for the Hydra jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    e.pop("HYDRA_FULL_ERROR", None) if "HYDRA_FULL_ERROR" not in env else None
    return subprocess.run([sys.executable, *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=600)


def one_error_line(proc: subprocess.CompletedProcess, prog: str, *names: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_data_prepare_bad_manifest_line(tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"path": "a.wav"}\n{not json\n')
    proc = run("-m", "metis.data", "prepare", str(manifest), str(tmp_path / "out"))
    one_error_line(proc, "metis data prepare", f"{manifest}:2", "invalid json")
    debug = run("-m", "metis.data", "prepare", str(manifest), str(tmp_path / "out"), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_eval_manifest_missing_field(tmp_path):
    manifest = tmp_path / "eval.jsonl"
    manifest.write_text('{"text": "hello"}\n')
    proc = run("-m", "metis.eval", "--task", "tts", "--manifest", str(manifest), "--metrics", "wer",
               "--out", str(tmp_path / "res"))
    one_error_line(proc, "metis eval", str(manifest), "'wav'")


def test_convert_missing_checkpoint(tmp_path):
    proc = run("-m", "metis.checkpoints.convert", str(tmp_path / "nope.ckpt"), str(tmp_path / "out"))
    one_error_line(proc, "metis convert", "nope.ckpt", "does not exist")


@pytest.mark.parametrize("script", ["train.py"])  # finetune.py and infer.py go through the same wrapper (metis.cli)
def test_hydra_job_user_error_is_one_line_unless_hydra_full_error(tmp_path, script):
    args = [str(REPO / script), f"paths.root_dir={tmp_path}", "run_name=nothing", "ckpt_path=last"]
    proc = run(*args)
    one_error_line(proc, f"metis {script.removesuffix('.py')}", "ckpt_path=last", "nothing to resume")
    full = run(*args, HYDRA_FULL_ERROR="1")
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_stand_in_visual_stream_of_a_file_that_is_not_audio(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not audio\n")
    proc = run("-m", "metis.conditions.visual", str(text), str(tmp_path / "vis.npy"))
    one_error_line(proc, "python -m metis.conditions.visual", str(text), "cannot read audio")
    assert not (tmp_path / "vis.npy").exists()
