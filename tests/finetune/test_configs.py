"""Every fine-tuning config composes; every task config instantiates (tiny model); the presets mirror
the published fine-tunes."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from metis import tasks as registry
from tests.finetune.conftest import CONFIG_DIR, compose_finetune

EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml")
                     if p.stem.startswith(("demo_", "base_")) and "_" in p.stem)
PUBLISHED = {"base_se_lora": ("se", "lora", 32), "base_tse_lora": ("tse", "lora", 32), "base_vc_lora": ("vc", "lora", 16),
             "base_vc_full": ("vc", "full", None), "base_tts_full": ("tts", "full", None),
             "base_l2s_full": ("l2s", "full", None), "base_omni_full": ("omni", "full", None)}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    cfg = compose_finetune([f"experiment={name}"])
    assert cfg.model._target_.endswith("FinetuneModule") and cfg.model.task == cfg.model.task
    # DeepSpeed + LoRA: checkpoints of the trainable tensors only (a no-op outside DeepSpeed)
    assert cfg.callbacks.trainable_only._target_ == "metis.lightning.strategies.TrainableOnlyCheckpoints"
    if name in PUBLISHED:
        task, method, r = PUBLISHED[name]
        assert (cfg.model.task, cfg.peft.method, cfg.peft.get("r")) == (task, method, r)
        assert cfg.model.net.hidden_size == 1536 and cfg.init == "amphion/metis"
        if task in ("se", "tse", "vc", "omni"):
            assert cfg.model.net.cond_dim == 1024 and cfg.model.features == "semantic"


def test_published_presets_exist():
    assert set(PUBLISHED) <= set(EXPERIMENTS) and {"demo_se", "demo_tse"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("task", list(registry.TASKS))
def test_task_config_instantiates(task, tiny_cfg):
    cfg = tiny_cfg(f"task={task}", "peft=lora", "peft.r=2")
    module = instantiate(cfg.model)
    assert module.task == task and module.conditioner is None  # the loader simulates the conditions
    assert instantiate(cfg.data.conditions).task == task
    spec = registry.get(task)
    assert module.plain_net.ft_type == (task if spec.adapter else None)
    assert module.plain_net.use_phone_cond == spec.phones
    if task == "l2s":
        assert type(module.plain_net.cond_adapter).__name__ == "Sequential"
