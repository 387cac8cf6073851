"""`python infer.py pipeline=demo ...`: the offline demo's own kinds of models, laid out as the demo
runs write them (k-means tokenizer, acoustic codec export, S2A and fine-tune exports), give a 24 kHz wav.

The demo's stage-1 adapters read the k-means tokenizer's 160-d CMVN fbank features, not w2v-BERT's
1024-d ones: with the released tokenizers the demo SE export failed with a shape error."""

import json
from pathlib import Path

import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from metis.atomic import write_json
from metis.checkpoints import published
from metis.inference.cli import infer
from metis.models.acoustic_codec import AcousticCodec
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A
from metis.checkpoints.io import save_safetensors
from metis.tokenizers.acoustic import EXPORT_CONFIG
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer
from tests.inference.conftest import FAST_SETTINGS, perturb, write_wav

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs" / "infer")
CODES = 16  # k-means clusters = the SSL vocabulary of every demo model here
CODEC = {"encoder": dict(d_model=2, out_channels=8),
         "decoder": dict(in_channels=8, codebook_size=64, codebook_dim=4, vocos_dim=16, vocos_intermediate_dim=32,
                         vocos_num_layers=1)}


def export(model: torch.nn.Module, target: str, config: dict, folder: Path) -> None:
    """model.safetensors + config.json, as ExportSafetensors writes them."""
    folder.mkdir(parents=True)
    save_safetensors({k: v for k, v in model.state_dict().items() if v.numel()}, folder / "model.safetensors")
    write_json(folder / "config.json", {"_target_": target, **config})


def build_demo_tree(root: Path) -> None:
    torch.manual_seed(0)
    wavs = [torch.from_numpy(sf.read(write_wav(root / f"fit{i}.wav", 1.0, i, sr=16000))[0]).float() for i in range(3)]
    KMeansTokenizer.fit(wavs, KMeansConfig(n_clusters=CODES, max_iter=2), log=lambda *a: None).save(root / "data/demo/tokenizer")

    codec = AcousticCodec(**CODEC)
    out = root / "outputs/demo_codec/export"
    for kind, part in (("acoustic_encoder", codec.encoder), ("acoustic_decoder", codec.decoder)):
        path = out / published.kind_spec(kind).filename
        path.parent.mkdir(parents=True, exist_ok=True)
        published.save(part, kind, path)
    write_json(out / EXPORT_CONFIG, {"_target_": "metis.models.acoustic_codec.AcousticCodec", **CODEC})

    s2a = dict(hidden_size=32, num_layers=1, num_heads=2, codebook_size=64, cond_codebook_size=CODES)
    for name, extra in (("demo_s2a_1layer", dict(num_quantizer=1, predict_layer_1=True)),
                        ("demo_s2a_full", dict(num_quantizer=12, predict_layer_1=False))):
        export(perturb(MaskGCTS2A(**s2a, **extra), 3), "metis.models.s2a.MaskGCTS2A", {**s2a, **extra},
               root / f"outputs/{name}/export")
    stage1 = dict(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=CODES, cond_dim=160)
    for task in ("se", "tse", "plc"):
        export(perturb(MetisStage1(ft_type=task, **stage1), 5), "metis.models.metis_stage1.MetisStage1",
               {"ft_type": task, **stage1}, root / f"outputs/demo_{task}/export")


def test_pipeline_demo_runs_se_tse_and_plc_offline_on_the_demo_models(tmp_path, monkeypatch):
    build_demo_tree(tmp_path)
    noisy = write_wav(tmp_path / "noisy.wav", 1.2, 7)
    prompt = write_wav(tmp_path / "prompt.wav", 0.8, 8)
    monkeypatch.chdir(tmp_path)  # the preset's paths are relative to the launch directory, like the demo runs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for task, extra in (("se", []), ("tse", [f"prompt={prompt}"]), ("plc", [])):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("infer", overrides=["pipeline=demo", f"task={task}", f"input={noisy}",
                                              f"output={tmp_path / task}.wav", "pipeline.progress=false", *extra])
        with open_dict(cfg):
            for key, value in FAST_SETTINGS.items():
                cfg.pipeline[key] = value
        results = infer(cfg)
        assert results[0].ok, results[0].error
        wav, sr = sf.read(tmp_path / f"{task}.wav")
        assert sr == 24000 and len(wav) % 480 == 0 and len(wav) >= 480 * 50  # >= the 1.2 s source's frames
        assert json.loads(json.dumps(results[0].to_json()))["task"] == task
