"""`python -m metis.checkpoints.convert` on plain Lightning checkpoints (fast); DeepSpeed folders are
converted in test_deepspeed.py (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from metis.checkpoints import published
from metis.checkpoints.convert import main as convert_main
from metis.checkpoints.deepspeed import is_deepspeed_checkpoint, strip_prefix, training_checkpoint_state
from metis.lightning.training import train
from tests.distributed.conftest import REPO, subprocess_env


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.lightning.conftest import TINY, compose_train

    root = tmp_path_factory.mktemp("convert")
    return train(compose_train(TINY + ["callbacks.model_checkpoint.every_n_train_steps=4"], root=root))


def test_cli_converts_a_lightning_ckpt_to_the_published_layout(trained, tmp_path):
    out = tmp_path / "metis_base"
    proc = subprocess.run([sys.executable, "-m", "metis.checkpoints.convert", trained["last_checkpoint"], str(out),
                           "--kind", "metis_base"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["global_step"] == "8" and report["kind"] == "metis_base"
    weights = load_file(out / "model.safetensors")
    ckpt = torch.load(trained["last_checkpoint"], map_location="cpu", weights_only=True)
    assert weights.keys() == {k[len("net."):] for k in ckpt["state_dict"]}
    for k, v in weights.items():
        assert torch.equal(v, ckpt["state_dict"]["net." + k]), k
    # The same tensors as the run's own export, and its config.json beside them; loads strictly.
    exported = load_file(trained["exported"])
    assert all(torch.equal(weights[k], exported[k]) for k in exported) and weights.keys() == exported.keys()
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 32
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["metis.kind"] == "metis_base"
    model = published.load("metis_base", out / "model.safetensors", hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=32)
    assert torch.equal(model.state_dict()["diff_estimator.layers.0.self_attn.q_proj.weight"],
                       weights["diff_estimator.layers.0.self_attn.q_proj.weight"])


def test_a_ckpt_carries_its_net_config_so_convert_needs_no_kind(trained, tmp_path):
    from metis.inference.loading import load_export

    ckpt = torch.load(trained["last_checkpoint"], map_location="cpu", weights_only=True)
    config = ckpt["net_config"]
    assert config["_target_"] == "metis.models.metis_stage1.MetisStage1" and config["hidden_size"] == 32
    lone = tmp_path / "elsewhere" / "x.ckpt"  # away from its run folder: no <run>/export/config.json to fall back on
    lone.parent.mkdir()
    lone.write_bytes(open(trained["last_checkpoint"], "rb").read())
    assert convert_main([str(lone), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == config
    model = load_export(tmp_path / "out", "stage1")  # a loadable export, built from the config alone
    assert all(torch.equal(v, ckpt["state_dict"]["net." + k]) for k, v in model.state_dict().items())
    # a checkpoint without it (written before checkpoints carried it): weights only, no config invented
    del ckpt["net_config"]
    torch.save(ckpt, lone)
    assert convert_main([str(lone), str(tmp_path / "old")]) == 0
    assert (tmp_path / "old" / "model.safetensors").is_file() and not (tmp_path / "old" / "config.json").exists()
    # a part of the net (--kind adapter/lora) is not the net the config builds: no config.json beside it
    assert convert_main([trained["last_checkpoint"], str(tmp_path / "part"), "--prefix", "net.diff_estimator."]) == 0
    assert not (tmp_path / "part" / "config.json").exists()


def test_convert_errors_name_the_problem(trained, tmp_path, capsys):
    assert convert_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert convert_main([trained["last_checkpoint"], str(tmp_path / "o"), "--kind", "maskgct_s2a_full"]) == 2
    assert "missing" in capsys.readouterr().err  # a stage-1 net is not an S2A file
    assert convert_main([trained["last_checkpoint"], str(tmp_path / "o"), "--prefix", "nope."]) == 2
    assert "no key starts with 'nope.'" in capsys.readouterr().err
    plain = tmp_path / "folder"
    plain.mkdir()
    assert not is_deepspeed_checkpoint(plain)
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        training_checkpoint_state(plain)
    bad = tmp_path / "half.ckpt"
    data = open(trained["last_checkpoint"], "rb").read()
    bad.write_bytes(data[: len(data) // 3])
    assert convert_main([str(bad), str(tmp_path / "o")]) == 2
    assert "not a loadable Lightning checkpoint" in capsys.readouterr().err
    assert strip_prefix({"net.a": torch.zeros(1), "other": torch.zeros(1)}) .keys() == {"a"}
