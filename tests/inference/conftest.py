"""Tiny random checkpoints written in the published layouts (amphion/metis, amphion/MaskGCT,
facebook/w2v-bert-2.0), so inference tests go through the real loading path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from metis.checkpoints import published
from metis.models.acoustic_codec import CodecDecoder, CodecEncoder
from metis.models.semantic_codec import RepCodec

W2V_HIDDEN = 32
W2V_LAYER = 3
SEM_CODES = 16
STAGE1 = dict(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=SEM_CODES, cond_dim=W2V_HIDDEN)
L2S_DIM = 24
S2A = dict(hidden_size=32, num_layers=1, num_heads=2, codebook_size=1024, cond_codebook_size=SEM_CODES)
REPCODEC = dict(codebook_size=SEM_CODES, hidden_size=W2V_HIDDEN, codebook_dim=4, vocos_dim=16, vocos_intermediate_dim=32,
                vocos_num_layers=2)
ENCODER = dict(d_model=2, up_ratios=[3, 4, 5, 8], out_channels=8)
DECODER = dict(in_channels=8, num_quantizers=12, codebook_size=1024, codebook_dim=4, vocos_dim=16, vocos_intermediate_dim=32,
               vocos_num_layers=2, n_fft=1920, hop_size=480)
# few decoding steps: the tests check the plumbing, not the audio
FAST_SETTINGS = dict(
    stage1_settings={t: {"n_timesteps": 4} for t in ("tts", "se", "tse", "vc", "l2s")},
    s2a_1layer_settings={"n_timesteps": [3]},
    s2a_full_settings={"n_timesteps": [3, 2] + [1] * 10},
)


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Random non-trivial weights (zero-init gates and LoRA B included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel():
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def write_wav(path: Path, seconds: float, seed: int, sr: int = 24000) -> Path:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    wav = 0.3 * np.sin(2 * math.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)
    sf.write(str(path), wav.astype(np.float32), sr)
    return path


def build_repos(root: Path) -> dict[str, Path]:
    """Write tiny metis/, maskgct/ and w2v/ folders laid out like the released repos."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    metis, maskgct, w2v = root / "metis", root / "maskgct", root / "w2v-bert-2.0"
    torch.manual_seed(0)
    cfg = Wav2Vec2BertConfig(hidden_size=W2V_HIDDEN, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                             output_hidden_size=W2V_HIDDEN, conv_depthwise_kernel_size=5, left_max_position_embeddings=16,
                             right_max_position_embeddings=4)
    Wav2Vec2BertModel(cfg).save_pretrained(w2v)
    SeamlessM4TFeatureExtractor(padding_value=1.0).save_pretrained(w2v)
    g = torch.Generator().manual_seed(1)
    save_file({"mean": torch.randn(W2V_HIDDEN, generator=g), "var": torch.rand(W2V_HIDDEN, generator=g) + 0.5},
              str(root / "stats.safetensors"))

    def put(model, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if v.numel()}, str(path))

    put(perturb(RepCodec(**REPCODEC), 2, 0.05), maskgct / "semantic_codec/model.safetensors")
    put(CodecEncoder(**ENCODER), maskgct / "acoustic_codec/model.safetensors")
    put(CodecDecoder(**DECODER), maskgct / "acoustic_codec/model_1.safetensors")
    published.save(perturb(published.build("maskgct_s2a_1layer", **S2A), 3), "maskgct_s2a_1layer",
                   maskgct / "s2a_model/s2a_model_1layer/model.safetensors")
    published.save(perturb(published.build("maskgct_s2a_full", **S2A), 4), "maskgct_s2a_full",
                   maskgct / "s2a_model/s2a_model_full/model.safetensors")
    published.save(perturb(published.build("metis_tts", **STAGE1), 5), "metis_tts", maskgct / "t2s_model/model.safetensors")

    base = perturb(published.build("metis_base", **STAGE1), 6)
    published.save(base, "metis_base", metis / "metis_base/model.safetensors")
    for seed, task in enumerate(("se", "tse"), start=7):  # LoRA split, as released
        wrapped = published.build(f"metis_{task}_lora", **STAGE1)
        wrapped.model.load_state_dict(base.state_dict(), strict=False)
        perturb(wrapped.model.cond_adapter, seed)
        with torch.no_grad():
            for name, p in wrapped.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
        folder = metis / f"metis_{task}"
        published.save(wrapped, f"metis_{task}_lora", folder / f"metis_{task}_lora_32.safetensors")
        published.save(wrapped, f"metis_{task}_adapter", folder / f"metis_{task}_lora_32_adapter.safetensors")
    published.save(perturb(published.build("metis_vc_full", **STAGE1), 9), "metis_vc_full", metis / "metis_vc/metis_vc.safetensors")
    published.save(perturb(published.build("metis_l2s", **{**STAGE1, "cond_dim": L2S_DIM}), 10), "metis_l2s",
                   metis / "metis_l2s/metis_l2s.safetensors")
    published.save(perturb(published.build("metis_omni", **STAGE1), 11), "metis_omni", metis / "metis_omni/metis_omni.safetensors")
    return {"metis": metis, "maskgct": maskgct, "w2v_bert": w2v, "stats": root / "stats.safetensors"}


def pipeline_kwargs(repos: dict[str, Path], **extra) -> dict:
    return dict(metis=str(repos["metis"]), maskgct=str(repos["maskgct"]), w2v_bert=str(repos["w2v_bert"]),
                stats=str(repos["stats"]), w2v_layer=W2V_LAYER, stage1_config=STAGE1,
                stage1_task_config={"l2s": {"cond_dim": L2S_DIM}}, s2a_1layer_config=S2A, s2a_full_config=S2A,
                repcodec_config=REPCODEC, encoder_config=ENCODER, decoder_config=DECODER, device="cpu", progress=False,
                **{**FAST_SETTINGS, **extra})


def infer_config(repos: dict[str, Path], overrides: list[str]):
    """configs/infer/infer.yaml composed as `python infer.py <overrides>` would, on the tiny checkpoints
    with few decoding steps."""
    import json

    from hydra import compose, initialize_config_dir

    kw = pipeline_kwargs(repos)
    overrides = [*overrides, "device=cpu"]
    for key in ("metis", "maskgct", "w2v_bert", "stats", "w2v_layer", "progress"):
        overrides.append(f"pipeline.{key}={kw[key]}")
    for key in ("stage1_config", "s2a_1layer_config", "s2a_full_config", "repcodec_config", "encoder_config", "decoder_config"):
        overrides.append(f"pipeline.{key}=" + json.dumps(kw[key]).replace('"', ""))
    overrides += ["pipeline.stage1_settings.se.n_timesteps=3", "pipeline.s2a_1layer_settings.n_timesteps=[2]",
                  "pipeline.s2a_full_settings.n_timesteps=[2,2,1,1,1,1,1,1,1,1,1,1]"]
    with initialize_config_dir(str(Path(__file__).parents[2] / "configs" / "infer"), version_base="1.3"):
        return compose("infer", overrides=overrides)


@pytest.fixture(scope="session")
def repos(tmp_path_factory) -> dict[str, Path]:
    return build_repos(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="session")
def audio(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    feats = np.random.default_rng(0).standard_normal((20, L2S_DIM)).astype(np.float32)
    np.save(d / "video.npy", feats)
    return {"prompt": write_wav(d / "prompt.wav", 1.0, 1), "source": write_wav(d / "source.wav", 1.3, 2),
            "long": write_wav(d / "long.wav", 3.5, 3), "prompt16k": write_wav(d / "prompt16k.wav", 1.1, 4, sr=16000),
            "video": d / "video.npy"}


@pytest.fixture(scope="session")
def pipeline(repos):
    from metis.inference.loading import load_pipeline

    return load_pipeline(**pipeline_kwargs(repos))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls on a shared 2-core machine run far faster single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
