"""Frame arithmetic on real LibriTTS speech (24 kHz) from ../shared/audio; skipped when absent.

Random (tiny-width) weights: only the lengths are under test, and they depend on the strides and the
ISTFT hop (the released 3*4*5*8 = 480 and n_fft 1920), not on the widths.
"""

from pathlib import Path

import pytest
import torch

from metis.audio import load_tensor, resample
from metis.models.acoustic_codec import CodecDecoder, CodecEncoder
from metis.tokenizers.semantic import semantic_num_frames
from tests.tokenizers.conftest import TINY_DECODER, TINY_ENCODER

from tests import SHARED_AUDIO as AUDIO
FILES = sorted(AUDIO.glob("libritts_*.wav"))
pytestmark = pytest.mark.skipif(not FILES, reason=f"no libritts_*.wav under {AUDIO} (shared real-speech folder absent)")


def load24(path: Path) -> torch.Tensor:
    return load_tensor(path, 24000)


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return CodecEncoder(**TINY_ENCODER).eval(), CodecDecoder(**TINY_DECODER).eval()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_acoustic_round_trip_lengths(codec, path):
    encoder, decoder = codec
    wav = load24(path)
    n = wav.numel()
    t_a = n
    for s in (3, 4, 5, 8):  # docs/reference.md §0: each stage maps L -> floor((L + 2 ceil(s/2) - 2s) / s) + 1
        t_a = (t_a + 2 * -(-s // 2) - 2 * s) // s + 1
    if n % 480 == 0:
        assert t_a == n // 480
    # the full file, and the file cropped to a multiple of the hop (exactly n / 480 frames)
    crops = {n: t_a, (n // 480) * 480: n // 480}
    with torch.no_grad():
        for length, frames in crops.items():
            z = encoder(wav[None, None, :length])
            assert z.shape == (1, TINY_ENCODER["out_channels"], frames)
            _, codes = decoder.quantize(z)
            assert codes.shape == (12, 1, frames)
            out = decoder(decoder.vq2emb(codes))
            assert out.shape == (1, 1, frames * 480) and torch.isfinite(out).all()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_semantic_frames_of_the_16k_resample(semantic_tokenizer, path):
    wav16 = resample(load24(path), 24000, 16000)
    n = wav16.numel()
    fbank_frames = 1 + (n - 400) // 160
    expected = -(-fbank_frames // 2)
    assert semantic_num_frames(n) == expected
    feats = semantic_tokenizer.features([wav16])
    assert feats[0].shape[0] == expected
    # docs/reference.md §0: for the same audio the semantic side has T_a - 1 frames, sometimes T_a
    t_a = load24(path).numel() // 480
    assert expected in (t_a - 1, t_a)
