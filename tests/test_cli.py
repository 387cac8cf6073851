"""The `metis` command: jobs, per-job help, "did you mean" for unknown keys, one line per log message,
no advertisements, run folders, thread defaults, and which heavy packages each job imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from metis import cli, threads

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data=synthetic", "model.net.hidden_size=32", "model.net.num_layers=2", "model.net.num_heads=2",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=false", "num_threads=1"]


def run(args: list[str], cwd: Path = ROOT, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **env})


def test_metis_help_lists_every_job(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for job in ("train", "finetune", "infer", "data", "eval", "convert", "app"):
        assert f"metis {job}" in out, job
    assert cli.main(["trian"]) == 2
    assert "did you mean `train`" in capsys.readouterr().err


def _groups(help_text: str) -> dict[str, set[str]]:
    """{group: options} from the "Config groups" lines of a --help text."""
    lines = [line.split(":", 1) for line in help_text.splitlines() if line.startswith("  ") and ":" in line]
    return {k.strip(): {o.strip() for o in v.split(",")} for k, v in lines if not k.strip().startswith("-")}


def test_help_is_per_entry_point(capsys):
    assert cli.main(["train", "--help"]) == 0
    train = _groups(capsys.readouterr().out)
    assert "tiny" in train["model"] and "metis_pretrain" in train["experiment"]
    assert "task" not in train and "peft" not in train  # fine-tuning-only groups
    assert not {"demo_se", "demo_tse", "base_se_lora", "base_vc_full"} & train["experiment"]
    assert cli.main(["finetune", "--help"]) == 0
    finetune = _groups(capsys.readouterr().out)
    assert "se" in finetune["task"] and "lora" in finetune["peft"]
    assert {"demo_se", "base_se_lora"} <= finetune["experiment"]


def test_train_py_help_matches_the_dispatcher():
    res = run(["train.py", "--help"])
    assert res.returncode == 0 and "usage: metis train" in res.stdout and "peft:" not in res.stdout


@pytest.mark.parametrize("job,override,guess", [
    ("train", "trainer.max_stepz=5", "trainer.max_steps"),
    ("train", "modle.net.hidden_size=8", "model"),
    ("finetune", "peft.rr=8", "peft.r"),
    ("infer", "pipeline.w2v_bret=/x", "pipeline.w2v_bert"),
])
def test_unknown_key_says_did_you_mean(job, override, guess, capsys):
    assert cli.main([job, override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    key = override.split("=")[0]
    assert f"no config key `{key}`" in err and f"did you mean `{guess}`?" in err, err


def test_valid_and_new_keys_pass_the_check():
    job = cli.HYDRA_JOBS["train"]
    assert cli.unknown_key_error(job, ["trainer.max_steps=5", "model=tiny", "+trainer.new_key=1", "--cfg", "job"]) is None
    assert cli.unknown_key_error(job, ["model=nosuchmodel"]) is None  # left to Hydra, which lists the options


def test_one_line_per_log_message_no_advertisement_and_run_folder(tmp_path):
    res = run(["train.py", *TINY, f"paths.root_dir={tmp_path}", "run_name=cli"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout + res.stderr
    assert sum("Seed set to 1234" in line for line in text.splitlines()) == 1, text[-3000:]
    assert sum("instantiating data" in line for line in text.splitlines()) == 1
    assert "💡" not in text and "litlogger" not in text and "litmodels" not in text
    run_dir = tmp_path / "outputs" / "cli"
    log = (run_dir / "train.log").read_text()
    assert "Seed set to 1234" in log  # Lightning's messages reach the run's Hydra log too
    assert (run_dir / "csv" / "metrics.csv").is_file() and not (run_dir / "wandb").exists()  # csv is the default logger


def test_finetune_keeps_hydra_files_in_the_run_folder():
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("finetune", overrides=["run_name=myrun"], return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.run.dir") == OmegaConf.select(cfg, "paths.output_dir") == "./outputs/myrun"
    assert OmegaConf.select(cfg, "hydra.job.name") == "finetune"
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        train_cfg = compose("train", return_hydra_config=True)
    assert OmegaConf.select(train_cfg, "hydra.run.dir") == "./outputs/demo"
    assert list(train_cfg.logger) == ["csv"]  # README: the default logger is csv


def test_auto_threads_follow_affinity_quota_and_load(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "Path", lambda p: tmp_path / "cpu.max")
    assert threads.usable_cores() == 4  # no cgroup file: affinity
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert threads.usable_cores() == 2  # a 2-CPU quota caps it
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 0, 0))
    assert threads.choose_threads("auto") == 1  # 2 cores, ~2 busy elsewhere -> 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0, 0))
    assert threads.choose_threads("auto") == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0, 0))
    assert threads.choose_threads("auto") == 1  # never 0
    assert threads.choose_threads(3) == 3 and threads.choose_threads(None) is None
    with pytest.raises(ValueError, match="num_threads"):
        threads.choose_threads(0)


def test_configs_default_to_auto_threads():
    for name in ("train.yaml", "finetune.yaml", "infer/infer.yaml"):
        assert OmegaConf.load(ROOT / "configs" / name).num_threads == "auto", name


def test_inference_eval_and_app_import_no_deepspeed_or_wandb():
    modules = ["metis.cli", "metis.inference.cli", "metis.inference.loading", "metis.eval.cli", "metis.eval.runner",
               "metis.checkpoints.convert", "metis.app"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('deepspeed', 'wandb')))")
    res = run(["-c", code])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
