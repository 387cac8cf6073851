"""`python infer.py task=plc input=lossy.wav` with a fine-tuned plc checkpoint (an export folder), and
`python -m metis.eval --task plc` on its output: PLCMOS plus the intrusive metrics, input scored too."""

import csv
import json
import pathlib

import numpy as np
import pytest
import soundfile as sf
import torch

from metis.audio import load_tensor as load_audio
from metis.checkpoints.io import save_safetensors
from metis.conditions.plc import PacketLoss
from metis.eval.protocols import Item, write_manifest
from metis.models.metis_stage1 import MetisStage1
from metis.tokenizers.semantic import semantic_num_frames
from tests.inference.conftest import STAGE1, perturb, pipeline_kwargs

ROOT = pathlib.Path(__file__).parents[2]


@pytest.fixture(scope="module")
def plc_export(tmp_path_factory):
    """A fine-tuned plc model as ExportFinetuned writes it: model.safetensors + config.json."""
    d = tmp_path_factory.mktemp("plc_export")
    net = perturb(MetisStage1(ft_type="plc", **STAGE1), 12)
    save_safetensors(net.state_dict(), d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"_target_": "metis.models.metis_stage1.MetisStage1", "ft_type": "plc", **STAGE1}))
    return d


@pytest.fixture(scope="module")
def lossy(tmp_path_factory, audio):
    wav = load_audio(audio["long"], 16000)
    out, info = PacketLoss(loss_rate=(0.2, 0.2))(wav, torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("plc_audio") / "lossy.wav"
    sf.write(str(path), out.numpy(), 16000)
    return path


def test_infer_cli_plc(repos, plc_export, lossy, tmp_path):
    from hydra import compose, initialize_config_dir

    from metis.inference.cli import infer

    kw = pipeline_kwargs(repos)
    overrides = ["task=plc", f"input={lossy}", f"output={tmp_path / 'restored.wav'}", "device=cpu",
                 f"pipeline.stage1={{plc:{plc_export}}}", "pipeline.chunk_seconds=2.0", "pipeline.overlap_seconds=0.5"]
    for key in ("metis", "maskgct", "w2v_bert", "stats", "w2v_layer", "progress"):
        overrides.append(f"pipeline.{key}={kw[key]}")
    for key in ("s2a_1layer_config", "s2a_full_config", "repcodec_config", "encoder_config", "decoder_config"):
        overrides.append(f"pipeline.{key}=" + json.dumps(kw[key]).replace('"', ""))
    overrides += ["pipeline.stage1_settings.plc.n_timesteps=3", "pipeline.s2a_1layer_settings.n_timesteps=[2]",
                  "pipeline.s2a_full_settings.n_timesteps=[2,2,1,1,1,1,1,1,1,1,1,1]"]
    with initialize_config_dir(str(ROOT / "configs" / "infer"), version_base="1.3"):
        cfg = compose("infer", overrides=overrides)
    assert cfg.pipeline.stage1_settings.plc.cfg == 0.0  # the registry's published-style default, merged in
    results = infer(cfg)
    assert results[0].ok, results[0].error
    assert results[0].chunks == 2 and results[0].settings["stage1"]["n_timesteps"] == 3  # chunked like se
    n16 = load_audio(lossy, 16000).numel()
    info = sf.info(str(tmp_path / "restored.wav"))
    assert info.samplerate == 24000 and info.frames == semantic_num_frames(n16) * 480  # one pass's length, as se


def test_eval_plc_scores_plcmos_and_intrusive_metrics(tmp_path):
    pytest.importorskip("speechmos")
    pytest.importorskip("pesq")
    from metis.eval.cli import main
    from tests.eval.conftest import shared_clip

    x, sr, _ = shared_clip("6829")
    x = x[: 4 * sr].astype(np.float32)
    lossy, _ = PacketLoss(loss_rate=(0.25, 0.25), p_repeat=0.0)(torch.from_numpy(x), torch.Generator().manual_seed(1))
    half = PacketLoss(loss_rate=(0.05, 0.05), p_repeat=1.0)(torch.from_numpy(x), torch.Generator().manual_seed(2))[0]
    for name, wav in (("ref", x), ("lossy", lossy.numpy()), ("out", half.numpy())):
        sf.write(tmp_path / f"{name}.wav", wav, sr)
    write_manifest([Item(id="u0", wav=tmp_path / "out.wav", reference=tmp_path / "ref.wav", input=tmp_path / "lossy.wav")],
                   tmp_path / "manifest.jsonl")
    res = main(["--task", "plc", "--manifest", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "res"), "--no-plots"])
    with open(tmp_path / "res" / "per_utterance.csv") as f:
        row = next(csv.DictReader(f))
    for key in ("plcmos", "pesq_wb", "stoi", "si_sdr", "dnsmos_ovrl"):
        assert key in row and f"input_{key}" in row, (key, sorted(row), res["notes"])
    # 5 % of packets repeated is closer to the clean speech than 25 % zeroed, by every measure
    assert float(row["plcmos"]) > float(row["input_plcmos"]) and float(row["pesq_wb"]) > float(row["input_pesq_wb"])


def test_plc_without_a_checkpoint_names_the_key(pipeline, lossy):
    from metis.inference.tasks import Request

    result = pipeline.run([Request("plc", input=str(lossy))])[0]
    assert not result.ok and "nothing is published for plc" in result.error and "pipeline.stage1={plc:" in result.error
