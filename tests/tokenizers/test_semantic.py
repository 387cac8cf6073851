"""SemanticTokenizer with a tiny random w2v-BERT loaded through the same from_pretrained path as the hub model."""

import pytest
import torch
from safetensors.torch import save_file

from metis.checkpoints.io import CheckpointMismatchError
from metis.tokenizers.base import SpeechTokenizer, file_sha256
from metis.tokenizers.semantic import SemanticTokenizer, W2vBertFeatureExtractor, load_stats, semantic_num_frames
from tests.tokenizers.conftest import HIDDEN, LAYER, TINY_REPCODEC, write_stats


def speech_like(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return 0.3 * torch.sin(2 * torch.pi * (150 + 50 * seed) * t) + 0.05 * torch.randn(n, generator=g)


@pytest.mark.parametrize("n, frames", [(16000, 49), (400, 1), (559, 1), (560, 1), (720, 2), (12345, 38), (48000, 149)])
def test_semantic_frame_formula(n, frames):
    assert semantic_num_frames(n) == frames


def test_semantic_frame_formula_rejects_short_audio():
    with pytest.raises(ValueError, match="400"):
        semantic_num_frames(399)


def test_protocol_and_identity(semantic_tokenizer, stats_file, repcodec_file, tiny_w2v_bert):
    tok = semantic_tokenizer
    assert isinstance(tok, SpeechTokenizer)
    assert (tok.sample_rate, tok.frame_rate, tok.codebook_size) == (16000, 50.0, TINY_REPCODEC["codebook_size"])
    ident = tok.identity()
    assert ident == {
        "name": "w2v-bert-2.0+repcodec",
        "w2v_bert": str(tiny_w2v_bert),
        "layer": str(LAYER),
        "stats_sha256": file_sha256(stats_file),
        "codec_sha256": file_sha256(repcodec_file),
    }


def test_identity_follows_stats_file_and_layer(tiny_w2v_bert, stats_file, tmp_path):
    base = W2vBertFeatureExtractor(tiny_w2v_bert, stats_file, layer=LAYER).identity()
    other_stats = write_stats(tmp_path / "other_stats.safetensors", seed=7)
    assert W2vBertFeatureExtractor(tiny_w2v_bert, other_stats, layer=LAYER).identity()["stats_sha256"] != base["stats_sha256"]
    assert W2vBertFeatureExtractor(tiny_w2v_bert, stats_file, layer=LAYER - 1).identity()["layer"] != base["layer"]


@pytest.mark.parametrize("n", [16000, 12345, 560, 7999])
def test_frame_counts_and_shapes(semantic_tokenizer, n):
    feats = semantic_tokenizer.features([speech_like(n, 0)])
    codes = semantic_tokenizer.encode([speech_like(n, 0)])
    assert feats[0].shape == (semantic_num_frames(n), HIDDEN) and feats[0].dtype == torch.float32
    assert codes[0].shape == (semantic_num_frames(n),) and codes[0].dtype == torch.int64
    assert 0 <= codes[0].min() and codes[0].max() < TINY_REPCODEC["codebook_size"]


def test_features_are_normalised_hidden_state_of_the_full_model(semantic_tokenizer, tiny_w2v_bert, stats_file):
    """The truncated model + normalisation == (full model hidden_states[layer] - mean) / sqrt(var)."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    wav = speech_like(12345, 1)
    proc = SeamlessM4TFeatureExtractor.from_pretrained(tiny_w2v_bert)
    full = Wav2Vec2BertModel.from_pretrained(tiny_w2v_bert).eval()
    assert len(full.encoder.layers) > LAYER  # the tokenizer really dropped blocks
    inputs = proc(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        h = full(inputs["input_features"], attention_mask=inputs["attention_mask"], output_hidden_states=True).hidden_states[LAYER][0]
    mean, std = load_stats(stats_file)
    expected = (h - mean) / std
    got = semantic_tokenizer.features([wav])[0]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, h, atol=1e-2)  # the stats did change something


def test_batched_equals_one_by_one(semantic_tokenizer):
    wavs = [speech_like(n, i) for i, n in enumerate([8000, 12345, 4500, 8000, 2345])]  # 2 batches of <= 3; odd and even F
    feats = semantic_tokenizer.features(wavs)
    codes = semantic_tokenizer.encode(wavs)
    for w, f, c in zip(wavs, feats, codes):
        assert torch.allclose(semantic_tokenizer.features([w])[0], f, atol=1e-5)
        assert torch.equal(semantic_tokenizer.encode([w])[0], c)


def test_codes_quantize_the_features(semantic_tokenizer):
    wav = speech_like(8000, 2)
    feat = semantic_tokenizer.features([wav])[0]
    codes, _ = semantic_tokenizer.codec.quantize(feat[None])
    assert torch.equal(semantic_tokenizer.encode([wav])[0], codes[0])


def test_bad_inputs(semantic_tokenizer):
    with pytest.raises(ValueError, match="at least 400"):
        semantic_tokenizer.encode([torch.zeros(300)])
    with pytest.raises(ValueError, match=r"mono \(n,\)"):
        semantic_tokenizer.encode([torch.zeros(2, 16000)])
    with pytest.raises(TypeError, match="list"):
        semantic_tokenizer.encode(torch.zeros(16000))
    assert semantic_tokenizer.encode([]) == []


def test_bad_files(tiny_w2v_bert, stats_file, repcodec_file, tmp_path):
    bad_stats = tmp_path / "bad_stats.safetensors"
    save_file({"mean": torch.zeros(HIDDEN)}, str(bad_stats))
    with pytest.raises(KeyError, match="'var'"):
        W2vBertFeatureExtractor(tiny_w2v_bert, bad_stats, layer=LAYER)
    wrong_width = tmp_path / "wrong_width.safetensors"
    save_file({"mean": torch.zeros(HIDDEN + 1), "var": torch.ones(HIDDEN + 1)}, str(wrong_width))
    with pytest.raises(ValueError, match="channels"):
        W2vBertFeatureExtractor(tiny_w2v_bert, wrong_width, layer=LAYER)
    with pytest.raises(ValueError, match="layer=9"):
        W2vBertFeatureExtractor(tiny_w2v_bert, stats_file, layer=9)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)model.safetensors.*codebook.weight: file \[16, 4\] vs model \[17, 4\]"):
        SemanticTokenizer(tiny_w2v_bert, stats_file, repcodec_file, layer=LAYER, codec_config={**TINY_REPCODEC, "codebook_size": 17})
    with pytest.raises(FileNotFoundError, match="semantic_codec/model.safetensors"):
        SemanticTokenizer(tiny_w2v_bert, stats_file, tmp_path, layer=LAYER, codec_config=TINY_REPCODEC)


def test_codec_from_a_folder_laid_out_like_the_hub_repo(semantic_tokenizer, tiny_w2v_bert, stats_file, repcodec_file):
    tok = SemanticTokenizer(tiny_w2v_bert, stats_file, repcodec_file.parent.parent, layer=LAYER, codec_config=TINY_REPCODEC)
    assert tok.codec_path == repcodec_file
    assert tok.identity() == semantic_tokenizer.identity()


def test_without_stats_only_raw_features(semantic_tokenizer, tiny_w2v_bert, repcodec_file):
    """stats=None is the mode for computing new stats (python -m metis.data stats uses raw_features)."""
    raw_tok = SemanticTokenizer(tiny_w2v_bert, None, repcodec_file, layer=LAYER, codec_config=TINY_REPCODEC)
    wav = speech_like(6000, 3)
    raw = raw_tok.raw_features([wav])[0]
    assert torch.allclose(raw, semantic_tokenizer.raw_features([wav])[0], atol=1e-6)
    mean, std = semantic_tokenizer.extractor.mean, semantic_tokenizer.extractor.std
    assert torch.allclose(semantic_tokenizer.features([wav])[0], (raw - mean) / std, atol=1e-6)
    assert raw_tok.identity()["stats_sha256"].startswith("none")
    with pytest.raises(ValueError, match="no stats file"):
        raw_tok.features([wav])
    with pytest.raises(ValueError, match="no stats file"):
        raw_tok.encode([wav])
    assert raw_tok.to("cpu") is raw_tok and raw_tok.device == torch.device("cpu")


def test_reference_pt_stats_format(tmp_path, stats_file):
    """The reference ships the stats as a torch pickle {mean, var}; it loads with weights_only."""
    mean, std = load_stats(stats_file)
    pt = tmp_path / "wav2vec2bert_stats.pt"
    torch.save({"mean": mean, "var": std**2}, pt)
    m2, s2 = load_stats(pt)
    assert torch.equal(m2, mean) and torch.allclose(s2, std)


def test_released_stats_copy():
    from pathlib import Path

    mean, std = load_stats(Path(__file__).resolve().parents[1] / "fixtures" / "wav2vec2bert_stats.safetensors")
    assert mean.shape == std.shape == (1024,)
    assert 0.26 < std.min() < 0.27 and 4.47 < std.max() < 4.48  # docs/reference.md §4.3: std in [0.266, 4.476]
