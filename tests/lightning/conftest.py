"""Compose the real `configs/train.yaml`, then shrink it for CPU tests (template style)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

TINY = [
    "data=synthetic", "model.net.hidden_size=32", "model.net.num_layers=2", "model.net.num_heads=2",
    "trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false", "logger=csv",
]


def compose_train(overrides: list[str], root: Path | None = None, config_name: str = "train"):
    """Compose `configs/<config_name>.yaml` with overrides, writing under `root` when given."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if root is not None:
        with open_dict(cfg):
            cfg.paths.root_dir = str(root)
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """A composed config of the tiny stage-1 model on synthetic tokens, writing under tmp_path."""
    return lambda *extra: compose_train(TINY + list(extra), root=tmp_path)
