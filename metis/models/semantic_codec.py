"""Semantic codec (RepCodec): normalised w2v-BERT features <-> one 8192-entry codebook (docs/reference.md §4.4).

    feat (b,t,h) -> encoder: Vocos backbone (h -> d) + Linear(d -> h) -> (b,h,t)
                 -> quantizer: ResidualVQ of 1 FactorizedVQ (h -> e, cosine lookup, e -> h) -> codes (b,t)
                 -> decoder: Vocos backbone (h -> d) + Linear(d -> h) -> x_rec (b,t,h)   [training only]

Keys are the published `semantic_codec/model.safetensors` ones: `encoder.{0,1}.*`, `decoder.{0,1}.*`,
`quantizer.quantizers.0.{in_project,out_project}.{bias,weight_g,weight_v}`, `...codebook.weight`.

Axes: b batch, t frames (50 Hz), h feature width (1024), d Vocos width, e codebook dim, q stages.
"""

from __future__ import annotations

import torch
from torch import nn

from metis.models.acoustic_codec import ResidualVQ
from metis.models.vocos import VocosBackbone


class RepCodec(nn.Module):
    """Args (defaults = the released semantic codec):
        codebook_size: k, entries per codebook.
        hidden_size: h, width of the w2v-BERT features.
        codebook_dim: e, width of the factorised code space.
        vocos_dim, vocos_intermediate_dim, vocos_num_layers: the encoder/decoder backbones.
        num_quantizers: residual stages (1 released).
        commitment, codebook_loss_weight: training loss weights of the quantizer.
    """

    def __init__(
        self,
        codebook_size: int = 8192,
        hidden_size: int = 1024,
        codebook_dim: int = 8,
        vocos_dim: int = 384,
        vocos_intermediate_dim: int = 2048,
        vocos_num_layers: int = 12,
        num_quantizers: int = 1,
        commitment: float = 0.15,
        codebook_loss_weight: float = 1.0,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.hidden_size = hidden_size
        self.encoder = nn.Sequential(
            VocosBackbone(hidden_size, vocos_dim, vocos_intermediate_dim, vocos_num_layers), nn.Linear(vocos_dim, hidden_size)
        )
        self.decoder = nn.Sequential(
            VocosBackbone(hidden_size, vocos_dim, vocos_intermediate_dim, vocos_num_layers), nn.Linear(vocos_dim, hidden_size)
        )
        self.quantizer = ResidualVQ(
            hidden_size, num_quantizers, codebook_size, codebook_dim,
            quantizer_dropout=0.0, commitment=commitment, codebook_loss_weight=codebook_loss_weight, use_l2_normlize=True,
        )
        for m in self.quantizer.modules():  # biases 0; weight-norm weights keep torch's init (docs/reference.md Q2)
            if isinstance(m, nn.Conv1d) and m.bias.device.type != "meta":
                nn.init.zeros_(m.bias)

    def _check(self, feat: torch.Tensor) -> None:
        if feat.dim() != 3 or feat.shape[-1] != self.hidden_size:
            raise ValueError(f"RepCodec expects features (b, t, {self.hidden_size}), got shape {tuple(feat.shape)}")

    def encode(self, feat: torch.Tensor) -> torch.Tensor:
        """feat (b, t, h) -> latent (b, h, t)."""
        self._check(feat)
        return self.encoder(feat.transpose(1, 2)).transpose(1, 2)

    def quantize(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feat (b, t, h) -> (codes (b, t) [(q, b, t) if several stages], quantized (b, t, h)).

        `quantized` is the quantizer output, not the decoder reconstruction.
        """
        quantized, codes, *_ = self.quantizer(self.encode(feat))
        if codes.shape[0] == 1:
            codes = codes[0]
        return codes, quantized.transpose(1, 2)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """feat (b, t, h) -> (x_rec (b, t, h), vq_loss (), codes (q, b, t)).

        vq_loss is the mean over stages of codebook + commitment losses (zero in eval mode); the
        reconstruction loss against `feat` is left to the caller.
        """
        quantized, codes, commit, book, _ = self.quantizer(self.encode(feat))
        x_rec = self.decoder(quantized)  # (b, t, h): the backbone returns channels-last
        return x_rec, (commit + book).mean(), codes

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (b, t) or (q, b, t) -> quantized vectors (b, t, h), as `quantize` returns them."""
        if codes.dim() == 2:
            codes = codes[None]
        return self.quantizer.vq2emb(codes).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (b, t) or (q, b, t) -> reconstructed features (b, t, h)."""
        return self.decoder(self.vq2emb(codes).transpose(1, 2))
