"""AudioSamples: short CPU fits with a tiny random S2A + codec in a folder laid out like amphion/MaskGCT
write the decoded validation samples as 24 kHz wavs and log them to (offline) wandb."""

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import wandb
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import open_dict
from safetensors.torch import save_file

from metis.checkpoints import published
from metis.checkpoints.io import CheckpointNotFoundError
from metis.lightning.audio_samples import WANDB_KEY, AudioSamples
from metis.lightning.training import train
from metis.models.acoustic_codec import CodecDecoder
from tests.inference.conftest import DECODER, S2A, SEM_CODES, perturb
from tests.lightning.conftest import TINY, compose_train

PROMPT_FRAMES = 5


class RecordingWandbLogger(WandbLogger):
    """An offline WandbLogger that also keeps what `log_audio` received."""

    calls: list = []  # class-level: the instance is built by Hydra inside train()

    def log_audio(self, key, audios, step=None, **kwargs):
        RecordingWandbLogger.calls.append({"key": key, "audios": audios, "step": step, **kwargs})
        super().log_audio(key, audios, step=step, **kwargs)


@pytest.fixture(scope="module")
def maskgct(tmp_path_factory) -> Path:
    """Tiny S2A 1-layer + full and codec decoder, at the paths of amphion/MaskGCT."""
    root = tmp_path_factory.mktemp("maskgct")
    torch.manual_seed(0)
    published.save(perturb(published.build("maskgct_s2a_1layer", **S2A), 3), "maskgct_s2a_1layer",
                   root / "s2a_model/s2a_model_1layer/model.safetensors")
    published.save(perturb(published.build("maskgct_s2a_full", **S2A), 4), "maskgct_s2a_full",
                   root / "s2a_model/s2a_model_full/model.safetensors")
    codec = root / "acoustic_codec/model_1.safetensors"
    codec.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in CodecDecoder(**DECODER).state_dict().items() if v.numel()}, str(codec))
    return root


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    RecordingWandbLogger.calls.clear()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core machine
    yield
    torch.set_num_threads(n)
    wandb.finish()  # else the next test's WandbLogger attaches to this run


def fit_cfg(tmp_path: Path, maskgct: Path, *extra: str, wandb: bool = True):
    cfg = compose_train(TINY + ["callbacks=audio_samples", "trainer.max_steps=4", "trainer.val_check_interval=2",
                                "trainer.limit_val_batches=1", "model.net.hidden_size=16", "model.net.num_layers=1",
                                *extra], root=tmp_path)
    with open_dict(cfg):
        node = cfg.callbacks.get("audio_samples") or {}
        node.update(s2a=str(maskgct), codec=str(maskgct), prompt_seconds=PROMPT_FRAMES / 50, stage1_steps=3,
                    s2a_1layer_steps=[2], s2a_full_steps=[2, 2] + [1] * 10, s2a_config=S2A, codec_config=DECODER)
        cfg.callbacks.model_checkpoint = None
        if wandb:
            cfg.logger.wandb = {"_target_": f"{__name__}.RecordingWandbLogger", "project": "metis-test",
                                "save_dir": str(tmp_path), "offline": True}
    return cfg


def first_val_lengths(cfg, n: int = 2) -> tuple[list[int], torch.Tensor]:
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    return batch["sem_mask"][:n].sum(1).long().tolist(), batch


def check_outputs(tmp_path: Path, expected_samples: list[int]) -> None:
    """Wavs only for the sampled validation (every_n_validations=2: step 4), and the wandb calls/media."""
    folders = sorted((tmp_path / "outputs/demo/samples").iterdir())
    assert [f.name for f in folders] == ["step00000004"]
    wavs = sorted(folders[0].glob("*.wav"))
    assert [w.name for w in wavs] == ["sample0.wav", "sample1.wav"]
    assert not list(folders[0].glob(".*"))  # no temporary files left
    for path, n in zip(wavs, expected_samples):
        data, sr = sf.read(path)
        assert sr == 24000 and data.shape == (n,) and np.isfinite(data).all() and np.abs(data).max() > 0

    [call] = RecordingWandbLogger.calls
    assert call["key"] == WANDB_KEY and call["step"] == 4 and call["sample_rate"] == [24000, 24000]
    assert [a.shape[0] for a in call["audios"]] == expected_samples
    assert all(np.isfinite(a).all() for a in call["audios"])
    media = list((tmp_path / "wandb").glob("offline-run-*/files/media/audio/**/*.wav"))
    assert len(media) == 2, media


def test_stage1_fit_decodes_prompt_continuations(tmp_path, maskgct):
    cfg = fit_cfg(tmp_path, maskgct, f"data.codebook_size={SEM_CODES}", "callbacks.audio_samples.every_n_validations=2")
    lengths, _ = first_val_lengths(cfg)
    result = train(cfg)
    assert result["global_step"] == 4
    # no acoustic tokens in stage-1 batches: S2A resynthesises the whole utterance, prompt included
    check_outputs(tmp_path, [t * 480 for t in lengths])


def test_s2a_fit_decodes_generated_acoustic_tokens(tmp_path, maskgct):
    cfg = fit_cfg(tmp_path, maskgct, "model=tiny_s2a", "data=synthetic_s2a", "model.net.hidden_size=16",
                  "model.net.num_heads=2", "callbacks.audio_samples.every_n_validations=2")
    lengths, batch = first_val_lengths(cfg)
    assert "ac" in batch
    train(cfg)
    # the first PROMPT_FRAMES acoustic frames are the prompt: only the rest is generated
    check_outputs(tmp_path, [(t - min(PROMPT_FRAMES, t // 2)) * 480 for t in lengths])


def test_vocabulary_mismatch_is_said_once_and_skipped(tmp_path, maskgct, caplog):
    cfg = fit_cfg(tmp_path, maskgct)  # stage 1 on the synthetic 32-code vocabulary, the S2A reads 16 codes
    assert cfg.data.codebook_size != SEM_CODES
    with caplog.at_level(logging.WARNING, logger="metis.lightning.audio_samples"):
        train(cfg)
    said = [r for r in caplog.records if "needs a stage-1 model trained" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert "32 SSL codes" in said[0].getMessage() and "w2v-BERT" in said[0].getMessage()
    assert not (tmp_path / "outputs/demo/samples").exists()
    assert RecordingWandbLogger.calls == []


def test_csv_only_run_writes_wavs_and_training_is_unchanged(tmp_path, maskgct):
    """Sampling draws from its own generators: the run's losses are those of a run without it."""
    with_samples = train(fit_cfg(tmp_path / "a", maskgct, f"data.codebook_size={SEM_CODES}", wandb=False))
    without = train(fit_cfg(tmp_path / "b", maskgct, f"data.codebook_size={SEM_CODES}", "callbacks=default", wandb=False))
    assert with_samples["val_history"] == without["val_history"]
    assert with_samples["metrics"]["train/loss"] == without["metrics"]["train/loss"]
    steps = sorted(p.name for p in (tmp_path / "a/outputs/demo/samples").iterdir())
    assert steps == ["step00000002", "step00000004"]
    assert not (tmp_path / "b/outputs/demo/samples").exists()


def test_rank0_hook_restores_train_mode_loads_models_once_and_reuses_noise(tmp_path, maskgct):
    from metis.models.metis_stage1 import MetisStage1

    cb = AudioSamples(s2a=str(maskgct), codec=str(maskgct), prompt_seconds=0.1, stage1_steps=2, s2a_1layer_steps=[1],
                      s2a_full_steps=[1] * 12, s2a_config=S2A, codec_config=DECODER, output_dir=str(tmp_path / "s"))
    net = MetisStage1(hidden_size=16, num_layers=1, num_heads=2, cond_codebook_size=SEM_CODES)
    modes = []
    generate = net.reverse_diffusion_rows
    net.reverse_diffusion_rows = lambda *a, **k: modes.append(net.training) or generate(*a, **k)
    lens = torch.tensor([12, 20, 9])
    batch = {"sem": torch.arange(20).repeat(3, 1) % SEM_CODES, "sem_mask": (torch.arange(20) < lens[:, None]).float()}
    module = SimpleNamespace(net=net, device=torch.device("cpu"), semantic_tokens=lambda b: (b["sem"], b["sem_mask"]))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, strategy=None, loggers=[], global_step=7,
                              default_root_dir=str(tmp_path))
    outputs = []
    for _ in range(2):
        net.train()
        cb.on_validation_epoch_start(trainer, module)
        cb.on_validation_batch_end(trainer, module, None, batch, 0)
        cb.on_validation_batch_end(trainer, module, None, {}, 1)  # only the first batch is sampled
        cb.on_validation_epoch_end(trainer, module)
        assert net.training and modes and not any(modes)
        outputs.append([sf.read(p)[0] for p in cb.last_paths])
        if len(outputs) == 1:
            models = (cb._s2a_models["s2a_1layer"], cb._s2a_models["s2a_full"], cb._decoder)
    assert cb.validations == 2
    assert [w.shape[0] for w in outputs[0]] == [12 * 480, 20 * 480]  # n_samples=2 of the 3 utterances, valid frames only
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))  # seeded per sample: the same noise every time
    assert (cb._s2a_models["s2a_1layer"], cb._s2a_models["s2a_full"], cb._decoder) == models


def test_missing_sources_fail_at_construction(tmp_path, maskgct):
    with pytest.raises(CheckpointNotFoundError, match="neither an existing file"):
        AudioSamples(s2a=str(maskgct), codec=str(tmp_path / "no/such/MaskGCT"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="s2a_model_1layer/model.safetensors not found in folder"):
        AudioSamples(s2a=str(empty), codec=str(maskgct))
    with pytest.raises(CheckpointNotFoundError, match="acoustic_codec/model_1.safetensors not found in folder"):
        AudioSamples(s2a=str(maskgct), codec=str(empty))
    AudioSamples()  # repo ids (the default amphion/MaskGCT) resolve on first use
