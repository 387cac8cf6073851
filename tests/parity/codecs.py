"""Parity checkers for the semantic codec (RepCodec) and the acoustic codec (encoder + decoder)."""

import torch

from metis.models.acoustic_codec import CodecDecoder, CodecEncoder
from metis.models.semantic_codec import RepCodec


def split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@torch.no_grad()
def check_semantic_codec(fx) -> None:
    model = RepCodec(**fx.config).eval()
    model.load_state_dict(fx.weights(), strict=True)
    feat = fx["in.feat"]
    fx.check("out.encoder", model.encoder(feat.transpose(1, 2)).transpose(1, 2))
    fx.check("out.encoder", model.encode(feat))  # the public wrapper says the same
    codes, quantized = model.quantize(feat)
    fx.check("out.codes", codes)
    fx.check("out.quantized", quantized)
    x_rec, vq_loss, all_indices = model(feat)
    fx.check("out.x_rec", x_rec)
    fx.check("out.all_indices", all_indices)
    assert vq_loss.item() == 0.0, "eval-mode quantizer losses must be zero"
    # the codes alone reproduce the quantizer output and the reconstruction
    fx.check("out.quantized", model.vq2emb(codes))
    fx.check("out.x_rec", model.decode(codes))


@torch.no_grad()
def check_acoustic_codec(fx) -> None:
    weights = fx.weights()
    enc_state, dec_state = split_prefix(weights, "encoder."), split_prefix(weights, "decoder.")
    assert len(enc_state) + len(dec_state) == len(weights), "weights outside encoder./decoder."
    encoder = CodecEncoder(**fx.config["encoder"]).eval()
    decoder = CodecDecoder(**fx.config["decoder"]).eval()
    encoder.load_state_dict(enc_state, strict=True)
    decoder.load_state_dict(dec_state, strict=True)

    runs = sorted({k.split(".")[0][2:] for k in fx.io if k.startswith("in")})
    assert runs, "no inJ.wav inputs"
    for j in runs:
        wav = fx[f"in{j}.wav"]
        z = encoder(wav)
        fx.check(f"out{j}.encoder", z)
        assert z.shape[-1] == encoder.num_frames(wav.shape[-1])
        quantized, codes, _, _, all_quantized = decoder.quantizer(z)
        fx.check(f"out{j}.quantized", quantized)
        fx.check(f"out{j}.codes", codes)
        fx.check(f"out{j}.all_quantized", all_quantized)
        q2, c2 = decoder.quantize(z)
        fx.check(f"out{j}.quantized", q2)
        fx.check(f"out{j}.codes", c2)
        emb = decoder.vq2emb(codes)
        fx.check(f"out{j}.vq2emb", emb)
        fx.check(f"out{j}.vq2emb_n1", decoder.vq2emb(codes, n_quantizers=1))
        fx.check(f"out{j}.wav", decoder(emb))
        fx.check(f"out{j}.wav_from_quantized", decoder(quantized))
        fx.check(f"out{j}.codes_BTN", codes.permute(1, 2, 0))


CHECKERS = {
    "semantic_codec": check_semantic_codec,
    "acoustic_codec": check_acoustic_codec,
}
