import numpy as np
import pytest
import torch

from metis.eval.audio import Audio
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


def test_wavlm_needs_a_model_folder(tmp_path):
    with pytest.raises(MetricUnavailable, match="--wavlm-model"):
        WavLMSim(None).check()
    (tmp_path / "wavlm_large_finetune.pth").write_bytes(b"x")
    with pytest.raises(MetricUnavailable, match="is a file"):
        WavLMSim(tmp_path / "wavlm_large_finetune.pth").check()
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
    from metis.eval.audio import resample

    a24 = resample(a, 16000, 24000)
    assert m.score(a24, 24000, prompt=Audio(a, 16000))["sim_wavlm"] > 0.99
    assert np.linalg.norm(m.embed(a, 16000)) == pytest.approx(1.0)
