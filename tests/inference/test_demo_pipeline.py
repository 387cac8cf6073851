"""`python infer.py pipeline=demo ...`: the offline demo's own kinds of models, laid out as the demo
runs write them (k-means tokenizer, acoustic codec export, S2A and fine-tune exports), give a 24 kHz wav
for every inference task, one request at a time and as a manifest.

The demo's stage-1 adapters read the k-means tokenizer's 160-d CMVN fbank features, not w2v-BERT's
1024-d ones (with the released tokenizers the demo SE export failed with a shape error); its l2s model
reads the 80-d stand-in visual stream (metis.conditions.audio_stand_in), the demo having no video."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from metis.atomic import write_json
from metis.checkpoints import published
from metis.checkpoints.io import save_safetensors
from metis.conditions.visual import STAND_IN_DIM, main as write_stand_in
from metis.inference.cli import infer
from metis.models.acoustic_codec import AcousticCodec
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A
from metis.tasks import names
from metis.tokenizers.acoustic import EXPORT_CONFIG
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer
from tests.inference.conftest import FAST_SETTINGS, perturb, write_wav

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs" / "infer")
CODES = 16  # k-means clusters = the SSL vocabulary of every demo model here
CODEC = {"encoder": dict(d_model=2, out_channels=8),
         "decoder": dict(in_channels=8, codebook_size=64, codebook_dim=4, vocos_dim=16, vocos_intermediate_dim=32,
                         vocos_num_layers=1)}
FEATURE_DIM = 160  # the k-means tokenizer's CMVN fbank
# what each demo fine-tune is (as finetune.py experiment=demo_<task> exports it)
STAGE1_TASKS = {"tts": dict(ft_type=None, use_phone_cond=True), "se": dict(ft_type="se"), "tse": dict(ft_type="tse"),
                "vc": dict(ft_type="vc"), "l2s": dict(ft_type="l2s", cond_dim=STAND_IN_DIM, use_zero_gate_adapter=False),
                "plc": dict(ft_type="plc")}


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
    stage1 = dict(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=CODES, cond_dim=FEATURE_DIM)
    for task, kind in STAGE1_TASKS.items():
        config = {**stage1, **kind}
        export(perturb(MetisStage1(**config), 5), "metis.models.metis_stage1.MetisStage1", config,
               root / f"outputs/demo_{task}/export")


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory):
    """The demo's output folders with tiny random models, and one input file of each kind."""
    root = tmp_path_factory.mktemp("demo")
    build_demo_tree(root)
    inputs = {"noisy": write_wav(root / "noisy.wav", 1.2, 7), "prompt": write_wav(root / "prompt.wav", 0.8, 8),
              "vis": root / "vis.npy"}
    assert write_stand_in([str(write_wav(root / "lips.wav", 1.0, 9)), str(inputs["vis"])]) == 0
    return root, inputs


def requests(inputs: dict) -> dict[str, dict]:
    """task -> the request fields of one demo request."""
    noisy, prompt = str(inputs["noisy"]), str(inputs["prompt"])
    return {"tts": {"prompt": prompt, "prompt_text": "a short prompt", "text": "and what it should say next"},
            "se": {"input": noisy}, "tse": {"input": noisy, "prompt": prompt}, "vc": {"input": noisy, "prompt": prompt},
            "l2s": {"prompt": prompt, "video_features": str(inputs["vis"])}, "plc": {"input": noisy}}


def compose_demo(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("infer", overrides=["pipeline=demo", "pipeline.progress=false", *overrides])
    with open_dict(cfg):
        for key, value in FAST_SETTINGS.items():
            cfg.pipeline[key] = value
    return cfg


def assert_24k_wav(path: Path, min_frames: int) -> None:
    wav, sr = sf.read(path)
    assert sr == 24000 and len(wav) % 480 == 0 and len(wav) >= 480 * min_frames
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0


def test_the_demo_preset_serves_every_inference_task():
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "pipeline" / "demo.yaml")
    assert sorted(cfg.tasks) == sorted(names(inference=True)) == sorted(cfg.stage1)


@pytest.mark.parametrize("task", names(inference=True))
def test_pipeline_demo_runs_each_task_offline_on_the_demo_models(task, demo_tree, monkeypatch):
    root, inputs = demo_tree
    monkeypatch.chdir(root)  # the preset's paths are relative to the launch directory, like the demo runs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fields = [f"{k}={v}" if " " not in v else f"{k}='{v}'" for k, v in requests(inputs)[task].items()]
    results = infer(compose_demo(f"task={task}", f"output={root / task}.wav", *fields))
    assert results[0].ok, results[0].error
    frames = {"tts": 1, "l2s": 2 * 25}.get(task, 50)  # audio tasks: >= the 1.2 s source's frames; l2s: 2 x 25 fps frames
    assert_24k_wav(root / f"{task}.wav", frames)
    assert json.loads(json.dumps(results[0].to_json()))["task"] == task


def test_pipeline_demo_runs_a_manifest_of_every_task(demo_tree, monkeypatch):
    root, inputs = demo_tree
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = [json.dumps({"task": task, "output": f"m_{task}.wav", **fields}) for task, fields in requests(inputs).items()]
    manifest = root / "requests.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    results = infer(compose_demo(f"manifest={manifest}", f"output_dir={root / 'batch'}"))
    assert [r.task for r in results] == list(requests(inputs)) and all(r.ok for r in results), [r.error for r in results]
    for task in requests(inputs):
        assert_24k_wav(root / "batch" / f"m_{task}.wav", 1)
    assert len((root / "batch" / "results.jsonl").read_text().splitlines()) == len(results)
