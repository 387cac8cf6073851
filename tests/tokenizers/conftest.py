"""Tiny stand-ins for the released tokenizer files, laid out like the real ones, built once per session."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from metis.models.acoustic_codec import CodecDecoder, CodecEncoder
from metis.models.semantic_codec import RepCodec

HIDDEN = 32  # tiny w2v-BERT width
LAYER = 3  # hidden_states index used by the tiny tokenizer (the released one uses 17 of 24)
TINY_REPCODEC = dict(codebook_size=16, hidden_size=HIDDEN, codebook_dim=4, vocos_dim=16, vocos_intermediate_dim=32, vocos_num_layers=2)
TINY_ENCODER = dict(d_model=2, up_ratios=[3, 4, 5, 8], out_channels=8)  # hop 480 as released
TINY_DECODER = dict(
    in_channels=8, num_quantizers=12, codebook_size=1024, codebook_dim=4,
    vocos_dim=16, vocos_intermediate_dim=32, vocos_num_layers=2, n_fft=1920, hop_size=480,
)


@pytest.fixture(scope="session")
def tiny_w2v_bert(tmp_path_factory) -> Path:
    """A folder like the hub's facebook/w2v-bert-2.0: config + weights + preprocessor config."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    path = tmp_path_factory.mktemp("w2v-bert-tiny")
    cfg = Wav2Vec2BertConfig(
        hidden_size=HIDDEN, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, output_hidden_size=HIDDEN,
        conv_depthwise_kernel_size=5, left_max_position_embeddings=16, right_max_position_embeddings=4,
    )
    torch.manual_seed(0)
    Wav2Vec2BertModel(cfg).save_pretrained(path)
    SeamlessM4TFeatureExtractor(padding_value=1.0).save_pretrained(path)  # 1.0 as in the hub config
    return path


def write_stats(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(HIDDEN, generator=g)
    var = torch.rand(HIDDEN, generator=g) + 0.5
    save_file({"mean": mean, "var": var, "std": var.sqrt()}, str(path))
    return path


@pytest.fixture(scope="session")
def stats_file(tmp_path_factory) -> Path:
    return write_stats(tmp_path_factory.mktemp("stats") / "wav2vec2bert_stats.safetensors", seed=1)


@pytest.fixture(scope="session")
def repcodec_file(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("maskgct") / "semantic_codec" / "model.safetensors"  # laid out like amphion/MaskGCT
    path.parent.mkdir()
    save_file(RepCodec(**TINY_REPCODEC).state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def acoustic_files(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(3)
    root = tmp_path_factory.mktemp("maskgct") / "acoustic_codec"  # laid out like amphion/MaskGCT
    root.mkdir()
    save_file(CodecEncoder(**TINY_ENCODER).state_dict(), str(root / "model.safetensors"))
    save_file(CodecDecoder(**TINY_DECODER).state_dict(), str(root / "model_1.safetensors"))
    return root / "model.safetensors", root / "model_1.safetensors"


@pytest.fixture(scope="session")
def semantic_tokenizer(tiny_w2v_bert, stats_file, repcodec_file):
    from metis.tokenizers.semantic import SemanticTokenizer

    return SemanticTokenizer(tiny_w2v_bert, stats_file, repcodec_file, layer=LAYER, codec_config=TINY_REPCODEC, batch_size=3)


@pytest.fixture(scope="session")
def acoustic_tokenizer(acoustic_files):
    from metis.tokenizers.acoustic import AcousticTokenizer

    enc, dec = acoustic_files
    return AcousticTokenizer(enc, dec, encoder_config=TINY_ENCODER, decoder_config=TINY_DECODER, batch_size=2)
