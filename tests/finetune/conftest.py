"""Compose the real `configs/finetune.yaml`, then shrink it: tiny model, synthetic speech, CPU."""

from pathlib import Path

import pytest
import torch

from metis.tokenizers.kmeans import KMeansTokenizer
from tests.finetune.synthetic_speech import fit_tokenizer
from tests.lightning.conftest import CONFIG_DIR, compose_train  # noqa: F401  (CONFIG_DIR re-exported for the tests)

TINY = [
    "data=synthetic", "data._target_=tests.finetune.synthetic_speech.SyntheticSpeechDataModule",
    "data.codebook_size=16", "+data.tokenizer_dir=${paths.data_dir}/tok", "feature_dim=160",
    "features=kmeans:${paths.data_dir}/tok",
    "model.net.hidden_size=32", "model.net.num_layers=2", "model.net.num_heads=2",
    "model.scheduler.warmup_steps=1", "model.optimizer.lr=3e-3",
    "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false", "logger=csv",
    "~callbacks.progress_bar",
]


def compose_finetune(overrides: list[str], root: Path | None = None):
    return compose_train(overrides, root, config_name="finetune")


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data") / "tok"
    fit_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tok(tok_dir) -> KMeansTokenizer:
    return KMeansTokenizer.load(tok_dir)


@pytest.fixture
def tiny_cfg(tmp_path, tok_dir):
    """A composed fine-tuning config of a tiny model on synthetic speech, writing under tmp_path."""
    (tmp_path / "data").mkdir(exist_ok=True)
    link = tmp_path / "data" / "tok"
    if not link.exists():
        link.symlink_to(tok_dir, target_is_directory=True)
    return lambda *extra: compose_finetune(TINY + list(extra), root=tmp_path)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models on a shared 2-core CPU: one thread is ~20x faster than two oversubscribed ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
