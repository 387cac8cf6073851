"""Every preset of the Hydra config tree composes, resolves and instantiates."""

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.lightning.conftest import CONFIG_DIR, compose_train

SUMMARY = json.loads((Path(__file__).resolve().parents[1] / "fixtures/layouts/SUMMARY.json").read_text())
GROUP = lambda name: sorted(p.stem for p in (Path(CONFIG_DIR) / name).glob("*.yaml"))  # noqa: E731
NEEDS_SHARDS = ["data.train_shards='/nonexistent/{000..001}.tar'"]


@pytest.mark.parametrize("model, layout", [
    ("metis_base", "metis_stage1_base__metis_base_model_safetensors"),
    ("s2a_1layer", "maskgct_s2a_1layer"),
    ("s2a_full", "maskgct_s2a_full"),
])
def test_paper_size_models_match_the_published_parameter_counts(model, layout):
    data = "shards_s2a" if model.startswith("s2a") else "shards"
    cfg = compose_train([f"model={model}", f"data={data}", *NEEDS_SHARDS])
    with torch.device("meta"):
        module = instantiate(cfg.model)
    assert sum(p.numel() for p in module.net.state_dict().values()) == SUMMARY[layout]["total_numel"]


@pytest.mark.parametrize("model", [m for m in GROUP("model") if "codec" not in m])  # codecs: test_codec_training
def test_every_model_preset_composes(model):
    data = "synthetic_s2a" if "s2a" in model else "synthetic"
    cfg = compose_train([f"model={model}", f"data={data}"])
    with torch.device("meta"):
        module = instantiate(cfg.model)
    assert isinstance(module, L.LightningModule)
    assert module.net.cond_emb.num_embeddings == cfg.data.codebook_size or model in ("metis_base", "s2a_1layer", "s2a_full")


@pytest.mark.parametrize("trainer", GROUP("trainer"))
def test_every_trainer_preset_composes(trainer, tmp_path):
    cfg = compose_train([f"trainer={trainer}"], root=tmp_path)
    node = cfg.trainer
    if node.accelerator == "cpu":
        assert isinstance(instantiate(node, logger=False), L.Trainer)
        return
    # GPU presets cannot build a Trainer here; their strategy objects must still instantiate.
    assert node.precision == "bf16-mixed"
    strategy = node.get("strategy")
    if trainer.startswith("deepspeed"):
        made = instantiate(strategy)
        assert made.config["zero_optimization"]["stage"] == int(trainer.removesuffix("_offload")[-1])
        assert ("offload_optimizer" in made.config["zero_optimization"]) == trainer.endswith("_offload")
    else:
        assert strategy == {"ddp": "ddp", "gpu": None}[trainer]


@pytest.mark.parametrize("logger", GROUP("logger"))
def test_every_logger_preset_instantiates(logger, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train([f"logger={logger}"], root=tmp_path)
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()]
    assert len(loggers) == {"none": 0, "csv": 1, "wandb": 2}[logger]


@pytest.mark.parametrize("callbacks", GROUP("callbacks"))
def test_every_callbacks_preset_instantiates(callbacks, tmp_path):
    cfg = compose_train([f"callbacks={callbacks}"], root=tmp_path)
    made = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    assert all(isinstance(cb, L.Callback) for cb in made)


@pytest.mark.parametrize("data", GROUP("data"))
def test_every_data_preset_instantiates(data, tmp_path):
    cfg = compose_train([f"data={data}", *(NEEDS_SHARDS if data.startswith("shards") else [])], root=tmp_path)
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)


PRETRAIN_EXPERIMENTS = [name for name in GROUP("experiment")  # the others are fine-tuning presets (tests/finetune)
                        if "override /task" not in (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
                        and "codec" not in name and not name.startswith("demo_")]  # codec + demo: test_codec_training.py


def test_pretraining_experiments_are_found():
    assert {"metis_pretrain", "s2a_pretrain"} <= set(PRETRAIN_EXPERIMENTS)


@pytest.mark.parametrize("experiment", PRETRAIN_EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", *NEEDS_SHARDS], root=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # no dangling interpolation
    assert cfg.run_name == experiment
    assert cfg.trainer.max_steps == 1_200_000 and cfg.model.optimizer.lr == 1e-4
    assert cfg.model.scheduler.warmup_steps == 32000 and cfg.data.max_tokens == 10000
    with torch.device("meta"):
        instantiate(cfg.model)


def test_cli_prints_the_resolved_job_config():
    out = subprocess.run([sys.executable, "train.py", "--cfg", "job", "model.net.hidden_size=96", "trainer.max_steps=7"],
                         cwd=Path(CONFIG_DIR).parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "hidden_size: 96" in out.stdout and "max_steps: 7" in out.stdout


@pytest.mark.parametrize("tokenizer", GROUP("tokenizer"))
def test_every_tokenizer_preset_lands_in_the_module_config(tokenizer, tmp_path):
    cfg = compose_train([f"tokenizer={tokenizer}", "data=shards_audio", *NEEDS_SHARDS], root=tmp_path)
    assert cfg.model.tokenizer._target_.startswith("metis.tokenizers.")
    assert list(cfg.data.fields) == ["wav16"]
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("demo, paper", [("tiny", "metis_base"), ("tiny_s2a", "s2a_1layer")])
def test_paper_presets_are_roots_and_demo_presets_diffs(demo, paper):
    """Editing a demo preset cannot change the paper recipe: the paper preset inherits from nothing,
    the demo preset starts from it and lists only what it changes."""
    root, diff = (OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{n}.yaml") for n in (paper, demo))
    assert "defaults" not in root and list(diff.defaults) == [paper, "_self_"]
    assert "_target_" not in diff and "_target_" not in diff.net
    full = compose_train([f"model={demo}"]).model
    for key in ("cfg_scale", "mask_prob_floor") if paper == "metis_base" else ("codebook_size", "mask_layer_schedule"):
        assert full.net[key] == root.net[key]  # inherited, not copied
    assert full.net.hidden_size == diff.net.hidden_size != root.net.hidden_size
