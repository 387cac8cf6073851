"""AcousticTokenizer with tiny random codec weights saved like the released files (hop 480, 12 x 1024)."""

import pytest
import torch

from metis.checkpoints.io import CheckpointMismatchError
from metis.tokenizers.acoustic import AcousticTokenizer
from metis.tokenizers.base import file_sha256
from tests.tokenizers.conftest import TINY_DECODER, TINY_ENCODER


def wav24(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 * torch.randn(n, generator=g)


def test_attributes_and_identity(acoustic_tokenizer, acoustic_files):
    tok = acoustic_tokenizer
    assert (tok.sample_rate, tok.frame_rate, tok.num_quantizers, tok.codebook_size, tok.hop_length) == (24000, 50.0, 12, 1024, 480)
    enc, dec = acoustic_files
    assert tok.identity() == {"name": "amphion-codec-24k", "encoder_sha256": file_sha256(enc), "decoder_sha256": file_sha256(dec)}


@pytest.mark.parametrize("n, frames", [(24000, 50), (4800, 10), (5000, 10), (5040, 10), (5279, 11), (479, 1)])
def test_encode_frames_and_decode_length(acoustic_tokenizer, n, frames):
    codes = acoustic_tokenizer.encode([wav24(n, 0)])[0]
    assert codes.shape == (frames, 12) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 1024
    wav = acoustic_tokenizer.decode(codes[None])
    assert wav.shape == (1, frames * 480) and torch.isfinite(wav).all()


def test_encode_matches_the_codec_and_batches_by_length(acoustic_tokenizer):
    wavs = [wav24(n, i) for i, n in enumerate([4800, 5000, 4800, 4800, 2400])]  # three of one length: 2 batches
    codes = acoustic_tokenizer.encode(wavs)
    with torch.no_grad():
        for w, c in zip(wavs, codes):
            _, ref = acoustic_tokenizer.decoder.quantize(acoustic_tokenizer.encoder(w[None, None]))  # (q, 1, t)
            assert torch.equal(c, ref[:, 0].T)


def test_decode_uses_the_first_stages(acoustic_tokenizer):
    codes = acoustic_tokenizer.encode([wav24(4800, 5)])[0][None]  # (1, t, 12)
    with torch.no_grad():
        emb = acoustic_tokenizer.decoder.vq2emb(codes[..., :3].permute(2, 0, 1))
        expected = acoustic_tokenizer.decoder(emb)[:, 0]
    assert torch.allclose(acoustic_tokenizer.decode(codes[..., :3]), expected, atol=1e-6)
    assert not torch.allclose(acoustic_tokenizer.decode(codes), expected, atol=1e-4)


def test_bad_inputs(acoustic_tokenizer, acoustic_files, tmp_path):
    with pytest.raises(ValueError, match=r"codes \(b, t, q\)"):
        acoustic_tokenizer.decode(torch.zeros(1, 5, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        acoustic_tokenizer.decode(torch.full((1, 5, 12), 1024))
    with pytest.raises(ValueError, match="no codec frame"):
        acoustic_tokenizer.encode([torch.zeros(100)])
    enc, dec = acoustic_files
    with pytest.raises(CheckpointMismatchError, match=r"(?s)model_1.safetensors.*unexpected:  quantizer.quantizers.11"):
        AcousticTokenizer(enc, dec, encoder_config=TINY_ENCODER, decoder_config={**TINY_DECODER, "num_quantizers": 11})
    with pytest.raises(FileNotFoundError, match="acoustic_codec/model.safetensors"):
        AcousticTokenizer(tmp_path, dec, encoder_config=TINY_ENCODER, decoder_config=TINY_DECODER)


def test_weights_from_a_folder_laid_out_like_the_hub_repo(acoustic_tokenizer, acoustic_files):
    root = acoustic_files[0].parent.parent
    tok = AcousticTokenizer(root, root, encoder_config=TINY_ENCODER, decoder_config=TINY_DECODER)
    assert (tok.encoder_path, tok.decoder_path) == acoustic_files
    assert tok.identity() == acoustic_tokenizer.identity()
    assert tok.to("cpu") is tok
    wav = wav24(4800, 9)
    assert torch.equal(tok.encode([wav])[0], acoustic_tokenizer.encode([wav])[0])
