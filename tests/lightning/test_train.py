"""Pre-training recipe on CPU: short fits of both modules, loss falls, resume, export reloads strictly."""

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import get_class
from safetensors.torch import load_file

from metis.checkpoints.io import load_into
from metis.lightning.training import train


def test_stage1_fit_writes_checkpoint_and_strict_export(tiny_cfg):
    result = train(tiny_cfg())
    assert result["global_step"] == 8
    assert result["last_checkpoint"] and result["exported"]
    assert len(result["val_history"]) == 2
    for key in ("train/loss", "val/loss", "val/acc_top1", "val/acc_top10", "val/baseline_unigram_acc_top1",
                "val/baseline_unigram_acc_top10", "val/baseline_unigram_loss", "val/baseline_copy_nearest_acc_top1"):
        assert key in result["metrics"], key

    # The export is self-describing and reloads strictly into a fresh net of the same class.
    export_dir = Path(result["exported"]).parent
    config = json.loads((export_dir / "config.json").read_text())
    net_cls = get_class(config.pop("_target_"))
    net = net_cls(**config)
    state = load_file(result["exported"])
    load_into(net, state, source=result["exported"])
    ckpt = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=False)
    for name, value in net.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"]["net." + name]), name
    # the unigram baseline's counts are the training tokens' (8 steps of them), kept for a resume
    assert ckpt["baselines"]["counts"].sum() > 0
    # the export records the frames it was trained on: what a fine-tune comparison adds to its own
    from metis.lightning.comparison import pretrain_frames

    assert ckpt["frames_seen"] == ckpt["baselines"]["counts"].sum() > 0
    assert pretrain_frames(str(export_dir)) == ckpt["frames_seen"]


def test_s2a_fit(tiny_cfg):
    result = train(tiny_cfg("model=tiny_s2a", "data=synthetic_s2a", "model.net.hidden_size=32", "model.net.num_heads=2"))
    assert result["global_step"] == 8
    assert torch.isfinite(torch.tensor(result["metrics"]["val/loss"]))
    assert any(k.startswith("train/acc_top1_layer") for k in result["metrics"])


def test_loss_falls_on_structured_tokens(tiny_cfg):
    cfg = tiny_cfg("trainer.max_steps=120", "trainer.val_check_interval=30", "trainer.limit_val_batches=4",
                   "model.net.hidden_size=64", "model.net.num_heads=4", "callbacks=none")
    history = train(cfg)["val_history"]
    assert len(history) == 4
    # A model that learns nothing stays at ln(32) = 3.47.
    assert history[-1] < 0.8 * history[0] and history[-1] < 3.0, f"validation loss did not fall clearly: {history}"


class CaptureStartState(L.Callback):
    def on_fit_start(self, trainer, module):
        # After the checkpoint is restored, before the data loaders draw their worker seeds.
        self.rng = torch.get_rng_state()

    def on_train_start(self, trainer, module):
        self.step = trainer.global_step
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.scheduler = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())


def test_resume_continues_at_saved_step_with_identical_state(tiny_cfg, monkeypatch):
    first = train(tiny_cfg("callbacks.model_checkpoint.every_n_train_steps=4"))
    saved = torch.load(first["last_checkpoint"], map_location="cpu", weights_only=False)
    assert saved["global_step"] == 8

    capture = CaptureStartState()
    original = L.Trainer.__init__

    def with_capture(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=list(callbacks or []) + [capture], **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", with_capture)
    second = train(tiny_cfg("trainer.max_steps=12", "ckpt_path=last"))
    assert capture.step == 8
    assert second["global_step"] == 12
    want = saved["optimizer_states"][0]
    for pid, state in want["state"].items():
        for key, value in state.items():
            assert torch.equal(capture.optimizer["state"][pid][key], value), (pid, key)
    assert capture.scheduler["last_epoch"] == saved["lr_schedulers"][0]["last_epoch"]
    assert torch.equal(capture.rng, saved["rng_state"]["torch"])


def test_fresh_run_refuses_to_overwrite_existing_checkpoints(tiny_cfg):
    train(tiny_cfg())
    with pytest.raises(FileExistsError, match="ckpt_path=last"):
        train(tiny_cfg("ckpt_path=null"))


def test_last_without_checkpoint_is_a_clear_error(tiny_cfg):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_cfg("ckpt_path=last"))


def test_shard_data_fit_and_resume(tiny_cfg, tmp_path):
    """Token shards through ShardDataModule: fit, checkpoint, and resume (hparams stay loadable
    with weights_only=True), with the token budget respected."""
    from tests.data.conftest import write_corpus

    for split, n in (("train", 3), ("val", 1)):
        (tmp_path / split).mkdir()
        write_corpus(tmp_path / split, n, 8, audio=False, prefix=split)
    data = ["data=shards", f"data.train_shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}",
            "data.codebook_size=512", "data.max_tokens=800", "data.max_dur=6.0", "data.num_workers=0",
            "data.val_num_workers=0", "callbacks.model_checkpoint.every_n_train_steps=4"]
    first = train(tiny_cfg(*data))
    assert first["global_step"] == 8 and torch.isfinite(torch.tensor(first["metrics"]["val/loss"]))
    second = train(tiny_cfg(*data, "trainer.max_steps=10", "ckpt_path=last"))
    assert second["global_step"] == 10


def test_on_the_fly_tokenization_of_raw_audio_shards(tiny_cfg, tmp_path):
    """Shards without tokens: the module tokenizes raw 16 kHz audio with its frozen tokenizer."""
    from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer
    from tests.data.conftest import tone, write_corpus

    wavs = [torch.from_numpy(tone(2.0, seed=i)) for i in range(6)]
    KMeansTokenizer.fit(wavs, KMeansConfig(n_clusters=16, seed=0)).save(tmp_path / "tok")
    for split, n in (("train", 2), ("val", 1)):
        (tmp_path / split).mkdir()
        write_corpus(tmp_path / split, n, 6, sem=False, prefix=split)
    cfg = tiny_cfg("data=shards_audio", f"data.train_shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}",
                   "data.codebook_size=16", "data.max_tokens=800", "data.max_dur=6.0", "data.num_workers=0",
                   "data.val_num_workers=0", "tokenizer=demo", f"model.tokenizer.directory={tmp_path / 'tok'}",
                   "trainer.max_steps=4", "trainer.val_check_interval=2", "callbacks=none")
    result = train(cfg)
    assert result["global_step"] == 4 and torch.isfinite(torch.tensor(result["metrics"]["val/loss"]))


def test_audio_batch_without_tokenizer_is_a_clear_error(tiny_cfg):
    from hydra.utils import instantiate

    module = instantiate(tiny_cfg().model)
    with pytest.raises(KeyError, match="no 'sem' tokens"):
        module.semantic_tokens({"wav16": torch.zeros(1, 16000), "wav16_lens": torch.tensor([16000])})


def test_ema_run_exports_the_averaged_weights(tiny_cfg, monkeypatch):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    seen = []
    original = L.Trainer.__init__

    def capture(self, *args, callbacks=None, **kwargs):
        seen.extend(cb for cb in callbacks or [] if isinstance(cb, EMAWeightAveraging))
        original(self, *args, callbacks=callbacks, **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", capture)
    result = train(tiny_cfg("callbacks=ema", "callbacks.ema.decay=0.5"))
    (ema,) = seen
    exported = load_file(result["exported"])
    averaged = {k[len("net."):]: v for k, v in ema._average_model.module.state_dict().items() if k.startswith("net.")}
    assert exported.keys() == averaged.keys()
    for name, value in averaged.items():
        assert torch.equal(exported[name], value), name
