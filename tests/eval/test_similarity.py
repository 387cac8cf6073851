import numpy as np
import pytest
import torch

from metis.audio import Audio
from metis.eval.metrics import MetricUnavailable, ResemblyzerSim, WavLMSim

from .conftest import shared_clip, speechlike


def test_resemblyzer_same_speaker_scores_higher_than_another():
    pytest.importorskip("resemblyzer")
    x, sr, _ = shared_clip("6829")
    other, osr, _ = shared_clip("7176")
    half = len(x) // 2
    m = ResemblyzerSim()
    m.check()
    same = m.score(x[:half], sr, prompt=Audio(x[half:], sr))["sim_resemblyzer"]
    different = m.score(x[:half], sr, prompt=Audio(other, osr))["sim_resemblyzer"]
    assert same > different + 0.1
    assert same > 0.75
    assert m.score(x, sr, prompt=Audio(x, sr))["sim_resemblyzer"] == pytest.approx(1.0, abs=1e-6)


def test_resemblyzer_scores_noise_below_another_speaker():
    """GE2E alone scores noise at the speech's level like another speaker; the VAD in front makes it 0."""
    pytest.importorskip("resemblyzer")
    pytest.importorskip("silero_vad")
    x, sr, _ = shared_clip("6829")
    other, osr, _ = shared_clip("7176")
    rms = float(np.sqrt(np.mean(x ** 2)))
    noise = (np.random.default_rng(0).standard_normal(len(x)) * rms).astype(np.float32)
    m = ResemblyzerSim()
    m.check()
    assert len(m.speech(x)) > 0.8 * len(x) and len(m.speech(noise)) == 0
    different = m.score(x, sr, prompt=Audio(other, osr))["sim_resemblyzer"]
    assert m.score(noise, sr, prompt=Audio(x, sr))["sim_resemblyzer"] == 0.0
    assert different > 0.2
    # speech under moderate noise is still speech, and still its speaker
    noisy = x + 0.3 * noise
    assert m.score(noisy, sr, prompt=Audio(x, sr))["sim_resemblyzer"] > different


def test_wavlm_needs_a_model_folder(tmp_path):
    with pytest.raises(MetricUnavailable, match="--wavlm-model"):
        WavLMSim(None).check()
    with pytest.raises(MetricUnavailable, match="does not exist"):
        WavLMSim(tmp_path / "missing").check()
    with pytest.raises(MetricUnavailable, match="config.json"):
        WavLMSim(tmp_path).check()


def test_wavlm_xvector_folder_gives_cosine_similarity(tmp_path):
    from transformers import WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16, 16, 16, 32), xvector_output_dim=24,
                      num_buckets=32, max_bucket_distance=64)
    WavLMForXVector(cfg).save_pretrained(tmp_path)
    m = WavLMSim(tmp_path)
    m.check()
    a, b = speechlike(1.5, 16000, f0=110, seed=1), speechlike(1.5, 16000, f0=220, seed=2)
    assert m.score(a, 16000, prompt=Audio(a, 16000))["sim_wavlm"] == pytest.approx(1.0, abs=1e-5)
    s = m.score(a, 16000, prompt=Audio(b, 16000))["sim_wavlm"]
    assert -1.0 <= s < 1.0 - 1e-4
    # the embedding is computed at 16 kHz whatever the input rate
    from metis.audio import resample

    a24 = resample(a, 16000, 24000)
    assert m.score(a24, 24000, prompt=Audio(a, 16000))["sim_wavlm"] > 0.99
    assert np.linalg.norm(m.embed(a, 16000)) == pytest.approx(1.0)


def _hf_to_fairseq(name: str) -> str:
    """transformers WavLMModel name -> fairseq/UniSpeech name, written out independently of the loader."""
    layer = {"attention.k_proj": "self_attn.k_proj", "attention.v_proj": "self_attn.v_proj",
             "attention.q_proj": "self_attn.q_proj", "attention.out_proj": "self_attn.out_proj",
             "attention.gru_rel_pos_linear": "self_attn.grep_linear", "attention.gru_rel_pos_const": "self_attn.grep_a",
             "attention.rel_attn_embed": "self_attn.relative_attention_bias", "layer_norm": "self_attn_layer_norm",
             "feed_forward.intermediate_dense": "fc1", "feed_forward.output_dense": "fc2",
             "final_layer_norm": "final_layer_norm"}
    if name.startswith("encoder.layers."):
        _, _, i, rest = name.split(".", 3)
        for hf, fs in layer.items():
            if rest == hf or rest.startswith(hf + "."):
                return f"encoder.layers.{i}.{fs}{rest[len(hf):]}"
    if name.startswith("feature_extractor.conv_layers."):
        i, part, kind = name.split(".")[2:]
        return f"feature_extractor.conv_layers.{i}.{'0' if part == 'conv' else '2.1'}.{kind}"
    fixed = {"feature_projection.projection.weight": "post_extract_proj.weight",
             "feature_projection.projection.bias": "post_extract_proj.bias",
             "feature_projection.layer_norm.weight": "layer_norm.weight",
             "feature_projection.layer_norm.bias": "layer_norm.bias",
             "encoder.layer_norm.weight": "encoder.layer_norm.weight",
             "encoder.layer_norm.bias": "encoder.layer_norm.bias",
             "encoder.pos_conv_embed.conv.bias": "encoder.pos_conv.0.bias",
             "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
             "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
             "masked_spec_embed": "mask_emb"}
    return fixed[name]


def test_unispeech_wavlm_tdnn_checkpoint(tmp_path):
    from transformers import WavLMConfig, WavLMModel

    from metis.eval.metrics.wavlm_tdnn import EcapaHead

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                      num_buckets=32, max_bucket_distance=800, feat_extract_norm="layer", do_stable_layer_norm=True,
                      conv_bias=False)
    wavlm = WavLMModel(cfg)
    head = EcapaHead(feat_dim=32, n_states=3, emb_dim=16)
    with torch.no_grad():
        head.feature_weight.copy_(torch.randn(3))
    model = {f"feature_extract.model.{_hf_to_fairseq(k)}": v for k, v in wavlm.state_dict().items()}
    model.update(head.state_dict())
    path = tmp_path / "wavlm_large_finetune.pth"
    torch.save({"model": model}, path)

    m = WavLMSim(path)
    m.check()
    assert "UniSpeech" in m.description
    a, b = speechlike(1.5, 16000, f0=110, seed=1), speechlike(1.5, 16000, f0=220, seed=2)
    assert m.score(a, 16000, prompt=Audio(a, 16000))["sim_wavlm"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= m.score(a, 16000, prompt=Audio(b, 16000))["sim_wavlm"] < 1.0 - 1e-4

    _, loaded, _ = m._load()
    # every WavLM tensor arrived at its transformers name unchanged
    ref = wavlm.state_dict()
    for k, v in loaded.wavlm.state_dict().items():
        if k != "masked_spec_embed":
            assert torch.equal(v, ref[k]), k
    assert loaded.wavlm.config.num_attention_heads == 2 and loaded.wavlm.config.num_buckets == 32
    # the embedding is the head over [layer-0 input, layer-1 input, encoder output] of the normalised wave
    x = torch.from_numpy(a)[None]
    xn = torch.nn.functional.layer_norm(x, x.shape[-1:])
    states = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: states.append(args[0])) for layer in wavlm.encoder.layers]
    with torch.no_grad():
        states.append(wavlm.eval()(xn).last_hidden_state)
        expected = head.eval()(torch.stack(states))
    for h in hooks:
        h.remove()
    assert torch.allclose(loaded(x), expected, atol=1e-5)

    torch.save({"model": {"linear.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(MetricUnavailable, match="not a UniSpeech"):
        WavLMSim(tmp_path / "other.pth").score(a, 16000, prompt=Audio(a, 16000))
