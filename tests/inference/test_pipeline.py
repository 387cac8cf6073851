"""End to end on tiny random checkpoints in the published layouts: every task, chunking, batching,
manifests, loading (published folders, LoRA split, exports) and the errors for missing files."""

import json

import pytest
import soundfile as sf
import torch

from metis.audio import load_tensor as load_audio
from metis.checkpoints.io import CheckpointNotFoundError
from metis.inference.loading import load_pipeline, load_stage1
from metis.inference.manifest import run_manifest
from metis.inference.tasks import Request, chunk_starts, tts_target_len
from metis.tokenizers.semantic import semantic_num_frames
from tests.inference.conftest import L2S_DIM, STAGE1, infer_config, pipeline_kwargs

SR = 24000


def acoustic_frames(path):
    return load_audio(path, SR).numel() // 480  # the encoder's frame count for these lengths


def check_wav(path, n):
    info = sf.info(str(path))
    assert info.samplerate == SR and info.channels == 1 and info.frames == n


def test_se_end_to_end(pipeline, audio, tmp_path):
    out = tmp_path / "se.wav"
    wav = pipeline(Request("se", input=str(audio["source"]), output=str(out)))
    n16 = load_audio(audio["source"], 16000).numel()
    assert wav.numel() == semantic_num_frames(n16) * 480 and torch.isfinite(wav).all()
    check_wav(out, wav.numel())


@pytest.mark.parametrize("task", ["vc", "tse"])
def test_vc_tse_end_to_end(pipeline, audio, task, tmp_path):
    out = tmp_path / f"{task}.wav"
    wav = pipeline(Request(task, input=str(audio["source"]), prompt=str(audio["prompt"]), output=str(out)))
    total = semantic_num_frames(load_audio(audio["prompt"], 16000).numel() + load_audio(audio["source"], 16000).numel())
    assert wav.numel() == (total - acoustic_frames(audio["prompt"])) * 480  # semantic prompt+target minus acoustic prompt (docs/reference.md Q10)
    assert torch.isfinite(wav).all()
    check_wav(out, wav.numel())


def test_tts_end_to_end_both_length_rules(pipeline, audio):
    tp = semantic_num_frames(load_audio(audio["prompt"], 16000).numel())
    ta = acoustic_frames(audio["prompt"])
    wav = pipeline(Request("tts", prompt=str(audio["prompt"]), prompt_text="the prompt", text="hello there", target_seconds=0.6))
    assert wav.numel() == (tp + 30 - ta) * 480 and torch.isfinite(wav).all()
    text, ptext = "a somewhat longer sentence", "short one"
    wav = pipeline(Request("tts", prompt=str(audio["prompt"]), prompt_text=ptext, text=text))
    assert wav.numel() == (tp + tp * len(text.encode()) // len(ptext.encode()) - ta) * 480
    assert tts_target_len(49, text, ptext, None) == 49 * 26 // 9


def test_l2s_end_to_end(pipeline, audio):
    wav = pipeline(Request("l2s", prompt=str(audio["prompt"]), video_features=str(audio["video"])))
    tp = semantic_num_frames(load_audio(audio["prompt"], 16000).numel())
    assert wav.numel() == (tp + 2 * 20 - acoustic_frames(audio["prompt"])) * 480 and torch.isfinite(wav).all()
    assert pipeline.stage1_model("l2s").cond_adapter[0].in_features == L2S_DIM  # the plain-MLP l2s adapter


def test_omni_routing(repos, audio):
    pipe = load_pipeline(**pipeline_kwargs(repos, omni=True), tasks=("tts", "se"))
    omni = pipe.stage1_model("tts")
    assert pipe.stage1_model("se") is omni and omni.ft_type == "omni" and omni.phone_emb is not None
    se = pipe(Request("se", input=str(audio["source"])))
    tts = pipe(Request("tts", prompt=str(audio["prompt"]), prompt_text="a b", text="c d", target_seconds=0.4))
    assert se.numel() == semantic_num_frames(load_audio(audio["source"], 16000).numel()) * 480
    assert tts.numel() > 0 and torch.isfinite(tts).all()


def test_long_input_is_chunked_with_the_one_pass_length(repos, audio):
    pipe = load_pipeline(**pipeline_kwargs(repos, chunk_seconds=1.0, overlap_seconds=0.2), tasks=("se", "vc"))
    n16 = load_audio(audio["long"], 16000).numel()
    assert chunk_starts(n16 // 320, 50, 10) == [0, 31, 63, 94, 125]  # 175 frames
    assert chunk_starts(50, 50, 10) == [0] and chunk_starts(90, 50, 10) == [0, 40]
    items = pipe.prepare(0, Request("se", input=str(audio["long"])))
    assert [it.start for it in items] == [0, 31, 63, 94, 125] and max(it.target_len for it in items) <= 50
    res = pipe.run([Request("se", input=str(audio["long"]))])[0]
    assert res.ok and res.chunks == 5
    assert pipe.last_outputs[0].numel() == semantic_num_frames(n16) * 480  # windows start on whole frames
    res = pipe.run([Request("vc", input=str(audio["long"]), prompt=str(audio["prompt"]))])[0]
    assert res.ok and res.chunks == 5 and torch.isfinite(pipe.last_outputs[0]).all()


def test_batched_requests_equal_one_by_one(repos, audio):
    pipe = load_pipeline(**pipeline_kwargs(repos, batch_size=4), tasks=("vc", "tts"))
    reqs = [Request("vc", input=str(audio["source"]), prompt=str(audio["prompt"]), seed=1),
            Request("vc", input=str(audio["long"]), prompt=str(audio["prompt16k"]), seed=2),
            Request("vc", input=str(audio["prompt"]), prompt=str(audio["source"]), seed=3),
            Request("tts", prompt=str(audio["prompt"]), prompt_text="one", text="two three", target_seconds=0.5, seed=4)]
    results = pipe.run(reqs)
    assert all(r.ok for r in results)
    batched = list(pipe.last_outputs)
    for req, wav in zip(reqs, batched):
        assert torch.equal(pipe(req), wav)


def test_manifest_runs_rows_reports_failures_and_records_settings(pipeline, audio, tmp_path):
    man = tmp_path / "requests.jsonl"
    rows = [{"task": "se", "input": str(audio["source"]), "output": "a.wav", "overrides": {"n_timesteps": 2}},
            {"task": "se", "input": "missing.wav"},
            "{not json",
            {"task": "vc", "input": str(audio["source"]), "prompt": str(audio["prompt"]), "seed": 7,
             "overrides": {"s2a_full": {"cfg": 0.0}}},
            {"task": "se", "input": str(audio["source"]), "colour": "red"}]
    man.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    results = run_manifest(pipeline, man, tmp_path / "out")
    lines = [json.loads(x) for x in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert [r["ok"] for r in lines] == [True, False, False, True, False]
    assert "missing.wav" in lines[1]["error"] and "line 3" in lines[2]["error"] and "colour" in lines[4]["error"]
    assert lines[0]["settings"]["stage1"]["n_timesteps"] == 2 and lines[3]["settings"]["s2a_full"]["cfg"] == 0.0
    assert lines[3]["settings"]["seed"] == 7 and lines[0]["rtf"] > 0
    check_wav(tmp_path / "out/a.wav", int(lines[0]["audio_seconds"] * SR))
    assert (tmp_path / "out/00004_vc.wav").is_file() and len(results) == 5


def test_missing_checkpoint_names_the_file_and_where(tmp_path, repos):
    with pytest.raises(CheckpointNotFoundError, match=r"t2s_model/model\.safetensors.*" + str(tmp_path)):
        load_stage1("tts", tmp_path, overrides=STAGE1)
    with pytest.raises(CheckpointNotFoundError, match=r"metis_se/metis_se\.safetensors.*metis_base/model\.safetensors"):
        load_stage1("se", tmp_path, overrides=STAGE1)
    with pytest.raises(CheckpointNotFoundError, match=r"w2v-BERT 2.0 \(pipeline\.w2v_bert\): expected the file at .*nowhere/config.json"):
        load_pipeline(**{**pipeline_kwargs(repos), "w2v_bert": str(tmp_path / "nowhere")})
    with pytest.raises(CheckpointNotFoundError, match="acoustic_codec/model_1.safetensors"):
        (tmp_path / "maskgct/semantic_codec").mkdir(parents=True)
        (tmp_path / "maskgct/semantic_codec/model.safetensors").write_bytes((repos["maskgct"] / "semantic_codec/model.safetensors").read_bytes())
        (tmp_path / "maskgct/acoustic_codec").mkdir()
        (tmp_path / "maskgct/acoustic_codec/model.safetensors").write_bytes((repos["maskgct"] / "acoustic_codec/model.safetensors").read_bytes())
        load_pipeline(**{**pipeline_kwargs(repos), "maskgct": str(tmp_path / "maskgct")})


def test_every_missing_checkpoint_in_one_message(tmp_path, repos):
    """An empty MaskGCT folder and no w2v-BERT: one error lists every file, where it goes and the real
    CLI key that points elsewhere (`pipeline.w2v_bert=`, which Hydra accepts; bare `w2v_bert=` it rejects)."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError) as err:
        load_pipeline(**{**pipeline_kwargs(repos), "maskgct": str(tmp_path / "empty"), "w2v_bert": str(tmp_path / "w2v")},
                      tasks=("tts", "se"))
    msg = str(err.value)
    assert msg.startswith("9 checkpoint file(s) missing"), msg
    for f in ("config.json", "preprocessor_config.json", "semantic_codec/model.safetensors", "acoustic_codec/model.safetensors",
              "acoustic_codec/model_1.safetensors", "s2a_model/s2a_model_1layer/model.safetensors",
              "s2a_model/s2a_model_full/model.safetensors", "t2s_model/model.safetensors"):
        assert f in msg, f
    for key in ("pipeline.w2v_bert", "pipeline.maskgct"):
        assert f"({key})" in msg
    assert "se stage 1" not in msg  # the se files are all in repos["metis"]
    assert str(tmp_path / "empty" / "t2s_model" / "model.safetensors") in msg


def test_loads_published_split_and_project_export(repos, audio, tmp_path):
    from metis.checkpoints import published
    from metis.checkpoints.io import save_safetensors

    merged = load_stage1("se", repos["metis"], overrides=STAGE1)  # base + adapter + LoRA, merged
    ref = published.load_lora_split("se", repos["metis"], **STAGE1)
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), ref.state_dict().values()))
    export = tmp_path / "export"  # what ExportSafetensors writes
    save_safetensors(merged.state_dict(), export / "model.safetensors")
    (export / "config.json").write_text(json.dumps({"_target_": "metis.models.metis_stage1.MetisStage1", "ft_type": "se", **STAGE1}))
    pipe = load_pipeline(**pipeline_kwargs(repos), tasks=("se",), stage1={"se": str(export)})
    assert all(torch.equal(a, b) for a, b in zip(pipe.stage1_model("se").state_dict().values(), merged.state_dict().values()))
    default = load_pipeline(**pipeline_kwargs(repos), tasks=("se",))
    req = Request("se", input=str(audio["source"]), seed=5)
    assert torch.equal(pipe(req), default(req))  # same weights, same seed -> same audio


def test_cli_single_request(repos, audio, tmp_path):
    from metis.inference.cli import infer

    cfg = infer_config(repos, ["task=se", f"input={audio['source']}", f"output={tmp_path / 'cli.wav'}",
                               f"results={tmp_path / 'r.jsonl'}"])
    results = infer(cfg)
    assert results[0].ok, results[0].error
    assert results[0].settings["stage1"]["n_timesteps"] == 3
    check_wav(tmp_path / "cli.wav", semantic_num_frames(load_audio(audio["source"], 16000).numel()) * 480)
    assert json.loads((tmp_path / "r.jsonl").read_text())["ok"]


def test_fast_bucketed_manifest_batches_equal_one_by_one(repos, audio):
    """fast=true with shape buckets: items are batched per bucket and every pass is padded to its bucket;
    each request's audio equals its own solo run (per-row decoding, padding masked)."""
    pipe = load_pipeline(**pipeline_kwargs(repos, batch_size=4, fast=True, buckets=[64, 128]), tasks=("vc", "tts"))
    assert pipe.fast.buckets == (64, 128)
    reqs = [Request("vc", input=str(audio["source"]), prompt=str(audio["prompt"]), seed=1),
            Request("vc", input=str(audio["prompt"]), prompt=str(audio["source"]), seed=3),
            Request("tts", prompt=str(audio["prompt"]), prompt_text="one", text="two three", target_seconds=0.5, seed=4)]
    results = pipe.run(reqs)
    assert all(r.ok for r in results) and all(r.settings["fast"] is True for r in results)
    batched = list(pipe.last_outputs)
    for req, wav in zip(reqs, batched):
        assert torch.equal(pipe(req), wav)


def test_fast_mode_options_need_fast(repos):
    with pytest.raises(ValueError, match="fast-mode options"):
        load_pipeline(**pipeline_kwargs(repos, precision="bf16"), tasks=("vc",))
    with pytest.raises(ValueError, match="precision"):
        load_pipeline(**pipeline_kwargs(repos, fast=True, precision="half"), tasks=("vc",))
