"""Unit tests of the codec building blocks: layouts, frame arithmetic, ISTFT, quantizers, training paths."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metis.models.acoustic_codec import CodecDecoder, CodecEncoder, FactorizedVQ, ResidualVQ, Snake1d, WNConv1d
from metis.models.semantic_codec import RepCodec
from metis.models.vocos import ISTFT, VocosBackbone

LAYOUTS = Path(__file__).resolve().parents[1] / "fixtures" / "layouts"


@pytest.mark.parametrize(
    "layout, ctor",
    [("semantic_codec_repcodec", RepCodec), ("acoustic_codec_encoder", CodecEncoder), ("acoustic_codec_decoder", CodecDecoder)],
)
def test_default_construction_matches_published_layout(layout, ctor):
    expected = json.loads((LAYOUTS / f"{layout}.json").read_text())
    with torch.device("meta"):
        model = ctor()
    state = model.state_dict()
    got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()}
    assert got == expected["tensors"]
    assert sum(p.numel() for p in model.parameters()) == expected["meta"]["num_parameters"]
    buffers = {k: [list(v.shape), str(v.dtype)] for k, v in model.named_buffers()}
    assert buffers == expected["meta"]["buffers_all"]


def tiny_encoder(up_ratios=(3, 4, 5, 8)):
    return CodecEncoder(d_model=2, up_ratios=up_ratios, out_channels=4).eval()


@pytest.mark.parametrize("n", [480, 960, 4800, 481, 719, 1000, 1439, 2000])
def test_encoder_frame_count_follows_floor_chain(n):
    enc = tiny_encoder()
    with torch.no_grad():
        t = enc(torch.randn(1, 1, n)).shape[-1]
    chain = n
    for s in (3, 4, 5, 8):
        chain = (chain + 2 * math.ceil(s / 2) - 2 * s) // s + 1
    assert t == chain == enc.num_frames(n)
    if n % 480 == 0:
        assert t == n // 480


def test_encoder_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(b, 1, n\)"):
        tiny_encoder()(torch.randn(2, 100))


def test_snake_formula_and_weight_norm_keys():
    snake = Snake1d(3)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1))
    x = torch.randn(2, 3, 5)
    a = snake.alpha
    assert torch.allclose(snake(x), x + torch.sin(a * x) ** 2 / (a + 1e-9))
    conv = WNConv1d(3, 4, kernel_size=5)
    assert set(conv.state_dict()) == {"bias", "weight_g", "weight_v"}
    v, g = conv.weight_v, conv.weight_g
    assert g.shape == (4, 1, 1)
    assert torch.allclose(conv.weight, g * v / v.flatten(1).norm(dim=1).view(4, 1, 1))


def same_padded_stft(x, n_fft, hop):
    """The analysis transform the 'same' ISTFT inverts: pad (w - hop)/2 each side, Hann frames, rfft."""
    pad = (n_fft - hop) // 2
    frames = F.pad(x, (pad, pad)).unfold(-1, n_fft, hop)  # (b, t, w)
    return torch.fft.rfft(frames * torch.hann_window(n_fft), dim=-1).transpose(1, 2)  # (b, f, t)


@pytest.mark.parametrize("n_fft, hop", [(16, 4), (1920, 480)])
def test_istft_inverts_same_padded_stft(n_fft, hop):
    t = 12
    x = torch.randn(2, t * hop, dtype=torch.float64)
    spec = same_padded_stft(x, n_fft, hop)
    assert spec.shape == (2, n_fft // 2 + 1, t)
    istft = ISTFT(n_fft, hop).double()
    y = istft(spec)
    assert y.shape == (2, t * hop)
    assert torch.allclose(y, x, atol=1e-9)


def test_istft_window_is_persistent_periodic_hann():
    istft = ISTFT(1920, 480)
    assert "window" in istft.state_dict()
    assert torch.equal(istft.window, torch.hann_window(1920, periodic=True))
    with pytest.raises(ValueError, match="padding"):
        ISTFT(16, 4, padding="center")


def test_vocos_backbone_shapes_and_gamma_init():
    bb = VocosBackbone(input_channels=5, dim=8, intermediate_dim=16, num_layers=4)
    assert all(torch.all(b.gamma == 0.25) for b in bb.convnext)
    assert bb(torch.randn(2, 5, 7)).shape == (2, 7, 8)


def tiny_decoder(**kw):
    cfg = dict(in_channels=6, num_quantizers=3, codebook_size=10, codebook_dim=2, vocos_dim=8, vocos_intermediate_dim=16, vocos_num_layers=2, n_fft=16, hop_size=4)
    return CodecDecoder(**{**cfg, **kw}).eval()


def test_decoder_lengths_and_vq2emb():
    dec = tiny_decoder()
    z = torch.randn(2, 6, 9)
    with torch.no_grad():
        quantized, codes = dec.quantize(z)
        assert codes.shape == (3, 2, 9) and codes.dtype == torch.int64
        assert torch.allclose(dec.vq2emb(codes), quantized, atol=1e-5)
        q1, c1 = dec.quantize(z, n_quantizers=1)
        assert c1.shape == (1, 2, 9) and torch.equal(c1[0], codes[0])
        assert torch.allclose(dec.vq2emb(codes, n_quantizers=1), q1, atol=1e-6)
        assert dec(quantized).shape == (2, 1, 9 * 4)
    with pytest.raises(ValueError, match="n_quantizers"):
        dec.vq2emb(codes, n_quantizers=4)


@pytest.mark.parametrize("bad", [dict(quantizer_type="vq"), dict(use_vocos=False), dict(weight_init=True)])
def test_decoder_rejects_unimplemented_variants(bad):
    with pytest.raises(ValueError):
        tiny_decoder(**bad)


def test_factorized_lookup_is_max_cosine_and_uses_raw_codebook():
    torch.manual_seed(0)
    vq = FactorizedVQ(input_dim=6, codebook_size=12, codebook_dim=3).eval()
    z = torch.randn(2, 6, 5)
    with torch.no_grad():
        z_q, _, _, codes, z_e = vq(z)
        cos = F.normalize(z_e.transpose(1, 2), dim=-1) @ F.normalize(vq.codebook.weight, dim=-1).t()  # (b, t, k)
        assert torch.equal(codes, cos.argmax(-1))
        raw = vq.codebook.weight[codes].transpose(1, 2)  # (b, e, t), un-normalised
        assert torch.allclose(z_q, vq.out_project(raw), atol=1e-6)


def test_residual_vq_residuals_shrink_and_training_losses_backprop():
    torch.manual_seed(0)
    rvq = ResidualVQ(input_dim=6, num_quantizers=4, codebook_size=16, codebook_dim=2, quantizer_dropout=0.5)
    z = torch.randn(4, 6, 7, requires_grad=True)
    rvq.eval()
    with torch.no_grad():
        q, codes, commit, book, parts = rvq(z)
        assert torch.allclose(parts.sum(0), q, atol=1e-5)
        assert commit.abs().sum() == 0 and book.abs().sum() == 0
    rvq.train()
    q, codes, commit, book, parts = rvq(z)
    assert codes.shape == (4, 4, 7) and parts.shape == (4, 4, 6, 7)
    assert (commit > 0).all() and (book > 0).all()
    (q.square().mean() + commit.sum() + book.sum()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # straight-through reaches the input
    assert rvq.quantizers[0].codebook.weight.grad.abs().sum() > 0  # codebook loss trains the codebook


def test_residual_vq_dropout_keeps_a_prefix_of_stages():
    torch.manual_seed(1)
    rvq = ResidualVQ(input_dim=6, num_quantizers=5, codebook_size=16, codebook_dim=2, quantizer_dropout=1.0).train()
    z = torch.randn(64, 6, 3)
    q, codes, _, _, parts = rvq(z)
    # every sample's output is the sum of its first k stages, k in 1..5, and some k < 5 occur
    sums = parts.cumsum(0)  # (q, b, c, t)
    ks = []
    for b in range(64):
        match = [k for k in range(5) if torch.allclose(sums[k, b], q[b], atol=1e-5)]
        assert match, f"sample {b} is not a prefix sum of stages"
        ks.append(match[0] + 1)
    assert min(ks) < 5


def test_repcodec_paths_agree_and_train():
    torch.manual_seed(0)
    codec = RepCodec(codebook_size=16, hidden_size=12, codebook_dim=3, vocos_dim=8, vocos_intermediate_dim=16, vocos_num_layers=2).eval()
    feat = torch.randn(2, 9, 12)
    with torch.no_grad():
        codes, quantized = codec.quantize(feat)
        assert codes.shape == (2, 9) and quantized.shape == (2, 9, 12)
        x_rec, loss, all_idx = codec(feat)
        assert torch.equal(all_idx[0], codes) and loss.item() == 0.0
        assert torch.allclose(codec.vq2emb(codes), quantized, atol=1e-5)
        assert torch.allclose(codec.decode(codes), x_rec, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(b, t, 12\)"):
        codec.quantize(torch.randn(2, 9, 11))
    codec.train()
    x_rec, loss, _ = codec(feat)
    assert loss.item() > 0
    (F.mse_loss(x_rec, feat) + loss).backward()
    assert codec.encoder[0].embed.weight.grad.abs().sum() > 0
