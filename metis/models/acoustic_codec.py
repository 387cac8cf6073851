"""Acoustic codec (24 kHz, 50 Hz, 12 x 1024 codes): docs/reference.md §5.

- `CodecEncoder`: DAC-style stack of weight-normalised convs with snake activations; 24 kHz waveform ->
  (b, 256, t) with t = n / 480 for n a multiple of 480 (strides 3*4*5*8).
- `ResidualVQ` of `FactorizedVQ` stages (also used, with one stage, by the semantic RepCodec).
- `CodecDecoder`: the quantizer plus a Vocos backbone + ISTFT head -> (b, 1, t * 480).

Parameter names are the published `acoustic_codec/model.safetensors` (encoder) and `model_1.safetensors`
(decoder) keys; weight-norm convs are stored as `weight_g` / `weight_v` (torch weight_norm, dim 0).

Axes: b batch, c channels, n samples, t frames, q quantizer stage, k codebook size, e codebook dim.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from metis.models.vocos import ISTFTHead, VocosBackbone


def WNConv1d(*args, **kwargs) -> nn.Conv1d:
    """Conv1d under torch's (legacy) weight norm, which stores exactly the published `weight_g`/`weight_v`.

    The parametrizations version would rename them to `parametrizations.weight.original{0,1}`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy API is deprecated, not removed
        return nn.utils.weight_norm(nn.Conv1d(*args, **kwargs))


# ------------------------------------------------------------------------------------------------
# Encoder


class Snake1d(nn.Module):
    """x + (alpha + 1e-9)^-1 * sin^2(alpha * x), one learned alpha per channel ([1, c, 1])."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, c, n) -> (b, c, n)."""
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> conv k7 (dilated) -> Snake -> conv k1, plus the input."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)  # "same" padding: lengths always agree


class EncoderBlock(nn.Module):
    """Three residual units at dim/2 (dilations 1, 3, 9), Snake, then a strided conv dim/2 -> dim."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, 1),
            ResidualUnit(half, 3),
            ResidualUnit(half, 9),
            Snake1d(half),
            # length L -> floor((L + 2 ceil(s/2) - 2s) / s) + 1, which is L/s when s divides L
            WNConv1d(half, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CodecEncoder(nn.Module):
    """Waveform -> latent frames, one frame per prod(up_ratios) samples.

    Args:
        d_model: channels after the first conv; doubled by each stage (96 -> 1536 released).
        up_ratios: strides of the stages (their product is the hop, 480 released).
        out_channels: latent width (256 released).
        use_tanh: squash the latent with tanh (false in the released model).
    """

    def __init__(
        self,
        d_model: int = 96,
        up_ratios: tuple[int, ...] | list[int] = (3, 4, 5, 8),
        out_channels: int = 256,
        use_tanh: bool = False,
    ):
        super().__init__()
        self.hop_length = math.prod(up_ratios)
        layers: list[nn.Module] = [WNConv1d(1, d_model, kernel_size=7, padding=3)]
        for stride in up_ratios:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride))
        layers += [Snake1d(d_model), WNConv1d(d_model, out_channels, kernel_size=3, padding=1)]
        if use_tanh:
            layers.append(nn.Tanh())  # parameter-free: the state dict is the same either way
        self.block = nn.Sequential(*layers)
        self.up_ratios = tuple(up_ratios)
        self._zero_biases()

    def _zero_biases(self) -> None:
        # The reference's trunc_normal_ init hits the recomputed `.weight` of weight-norm convs and has
        # no effect (docs/reference.md Q2): the effective init is torch's default for v, g = |v|, bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv1d) and m.bias is not None and m.bias.device.type != "meta":
                nn.init.zeros_(m.bias)

    def num_frames(self, n: int) -> int:
        """Frames produced for n samples (exact floor chain of the strided convs, docs/reference.md §0)."""
        for s in self.up_ratios:
            n = (n + 2 * math.ceil(s / 2) - 2 * s) // s + 1
        return n

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (b, 1, n) -> (b, out_channels, t)."""
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"CodecEncoder expects a waveform (b, 1, n), got shape {tuple(wav.shape)}")
        return self.block(wav)


# ------------------------------------------------------------------------------------------------
# Quantizer


class FactorizedVQ(nn.Module):
    """Project to a small code space, look up the nearest code, project back (DAC's factorised VQ).

    With `use_l2_normlize` the lookup compares L2-normalised latents and codes (= max cosine), but the
    output uses the raw code row. Training returns per-sample commitment and codebook losses and a
    straight-through gradient.
    """

    def __init__(
        self,
        input_dim: int,
        codebook_size: int,
        codebook_dim: int,
        commitment: float = 0.005,
        codebook_loss_weight: float = 1.0,
        use_l2_normlize: bool = True,
    ):
        super().__init__()
        if input_dim == codebook_dim:
            raise ValueError(f"FactorizedVQ: input_dim == codebook_dim == {input_dim}: the released codecs always project")
        self.in_project = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_project = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        self.commitment = commitment
        self.codebook_loss_weight = codebook_loss_weight
        self.use_l2_normlize = use_l2_normlize

    def lookup(self, z_e: torch.Tensor) -> torch.Tensor:
        """z_e (b, e, t) -> codes (b, t): the nearest codebook row (squared Euclidean distance)."""
        b = z_e.shape[0]
        enc = z_e.transpose(1, 2).reshape(-1, z_e.shape[1])  # (b*t, e)
        book = self.codebook.weight  # (k, e)
        if self.use_l2_normlize:
            enc, book = F.normalize(enc), F.normalize(book)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1)[None]  # (b*t, k)
        return dist.argmin(1).view(b, -1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (b, t) -> raw code vectors (b, e, t) (before out_project)."""
        return self.codebook(codes).transpose(1, 2)

    def forward(self, z: torch.Tensor):
        """z (b, c, t) -> (z_q (b, c, t), commit_loss (b,), codebook_loss (b,), codes (b, t), z_e (b, e, t))."""
        z_e = self.in_project(z)
        codes = self.lookup(z_e)
        z_q = self.embed(codes)
        if self.training:
            commit_loss = F.mse_loss(z_e, z_q.detach(), reduction="none").mean([1, 2]) * self.commitment
            codebook_loss = F.mse_loss(z_q, z_e.detach(), reduction="none").mean([1, 2]) * self.codebook_loss_weight
        else:
            commit_loss = codebook_loss = z.new_zeros(z.shape[0])
        z_q = z_e + (z_q - z_e).detach()  # straight-through estimator
        return self.out_project(z_q), commit_loss, codebook_loss, codes, z_e

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (b, t) -> out_project(codebook[codes]) (b, c, t)."""
        return self.out_project(self.embed(codes))


class ResidualVQ(nn.Module):
    """`num_quantizers` FactorizedVQ stages, each quantising what the previous ones left over.

    Training: a `quantizer_dropout` share of the batch keeps only a random number of stages (1..Q);
    the others keep all of them. Eval: all stages, or the first `n_quantizers`.
    """

    def __init__(
        self,
        input_dim: int = 256,
        num_quantizers: int = 12,
        codebook_size: int = 1024,
        codebook_dim: int = 8,
        quantizer_dropout: float = 0.5,
        commitment: float = 0.25,
        codebook_loss_weight: float = 1.0,
        use_l2_normlize: bool = True,
    ):
        super().__init__()
        self.num_quantizers = num_quantizers
        self.quantizer_dropout = quantizer_dropout
        self.quantizers = nn.ModuleList(
            FactorizedVQ(input_dim, codebook_size, codebook_dim, commitment, codebook_loss_weight, use_l2_normlize)
            for _ in range(num_quantizers)
        )

    def forward(self, z: torch.Tensor, n_quantizers: int | None = None):
        """z (b, c, t) -> (quantized (b, c, t), codes (q, b, t), commit_losses (q,), codebook_losses (q,),
        all_quantized (q, b, c, t)); q = stages run (all in training, else n_quantizers or all)."""
        b = z.shape[0]
        if self.training:
            # per-sample stage count: Q (all) except for the dropout share, which draws from 1..Q
            keep = torch.full((b,), self.num_quantizers, device=z.device)
            n_drop = int(b * self.quantizer_dropout)
            keep[:n_drop] = torch.randint(1, self.num_quantizers + 1, (b,), device=z.device)[:n_drop]
            n_run = self.num_quantizers
        else:
            n_run = self.num_quantizers if n_quantizers is None else min(n_quantizers, self.num_quantizers)
            keep = torch.full((b,), n_run, device=z.device)
        if n_run < 1:
            raise ValueError(f"ResidualVQ: n_quantizers={n_quantizers} must be >= 1")

        quantized = torch.zeros_like(z)
        residual = z
        codes, commit, book, parts = [], [], [], []
        for i, vq in enumerate(self.quantizers[:n_run]):
            z_q, commit_i, book_i, codes_i, _ = vq(residual)
            used = (keep > i).to(z.dtype)  # (b,) 1 where this stage is kept
            quantized = quantized + z_q * used[:, None, None]
            residual = residual - z_q
            commit.append((commit_i * used).mean())
            book.append((book_i * used).mean())
            codes.append(codes_i)
            parts.append(z_q)
        return quantized, torch.stack(codes), torch.stack(commit), torch.stack(book), torch.stack(parts)

    def vq2emb(self, codes: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """codes (q, b, t) -> sum over the first n_quantizers (default all given) stages (b, c, t)."""
        if codes.dim() != 3:
            raise ValueError(f"vq2emb expects codes (q, b, t), got shape {tuple(codes.shape)}")
        n = codes.shape[0] if n_quantizers is None else n_quantizers
        if not 1 <= n <= min(codes.shape[0], self.num_quantizers):
            raise ValueError(f"vq2emb: n_quantizers={n} but codes hold {codes.shape[0]} stages of {self.num_quantizers}")
        out = self.quantizers[0].vq2emb(codes[0])
        for i in range(1, n):
            out = out + self.quantizers[i].vq2emb(codes[i])
        return out


# ------------------------------------------------------------------------------------------------
# Decoder


class Vocos(nn.Module):
    """Backbone + ISTFT head: (b, c, t) latent -> (b, t * hop) waveform. Keys `backbone.*`, `head.*`."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int, n_fft: int, hop_size: int, padding: str):
        super().__init__()
        self.backbone = VocosBackbone(input_channels, dim, intermediate_dim, num_layers)
        self.head = ISTFTHead(dim, n_fft, hop_size, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class CodecDecoder(nn.Module):
    """The residual VQ (`quantizer`) and the Vocos waveform decoder (`model`).

    Only the released combination is implemented: quantizer_type "fvq" with use_vocos. The remaining
    arguments mirror the released config so that it can be passed whole: `upsample_initial_channel`
    and `up_ratios` configure the non-Vocos decoder, and `codebook_type`, `kmeans_init`,
    `kmeans_iters`, `decay`, `eps`, `threshold_ema_dead_code` the EMA quantizer; none of them affects
    this model, and neither does `in_channel`, a typo of the released config that the reference also
    ignores (docs/reference.md Q16). `weight_init` must be false (the released value).
    """

    def __init__(
        self,
        in_channels: int = 256,
        upsample_initial_channel: int = 1536,
        up_ratios: tuple[int, ...] | list[int] = (8, 5, 4, 3),
        num_quantizers: int = 12,
        codebook_size: int = 1024,
        codebook_dim: int = 8,
        quantizer_type: str = "fvq",
        quantizer_dropout: float = 0.5,
        commitment: float = 0.25,
        codebook_loss_weight: float = 1.0,
        use_l2_normlize: bool = True,
        codebook_type: str = "euclidean",
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        decay: float = 0.8,
        eps: float = 0.5,
        threshold_ema_dead_code: int = 2,
        weight_init: bool = False,
        use_vocos: bool = True,
        vocos_dim: int = 512,
        vocos_intermediate_dim: int = 4096,
        vocos_num_layers: int = 30,
        n_fft: int = 1920,
        hop_size: int = 480,
        padding: str = "same",
        in_channel: int | None = None,
    ):
        super().__init__()
        if quantizer_type != "fvq":
            raise ValueError(f"CodecDecoder quantizer_type={quantizer_type!r}: only 'fvq' (the released codec) is implemented")
        if not use_vocos:
            raise ValueError("CodecDecoder use_vocos=False: only the Vocos decoder (the released codec) is implemented")
        if weight_init:
            raise ValueError("CodecDecoder weight_init=True: not implemented (the released config has false)")
        self.hop_size = hop_size
        self.quantizer = ResidualVQ(
            in_channels, num_quantizers, codebook_size, codebook_dim, quantizer_dropout, commitment, codebook_loss_weight, use_l2_normlize
        )
        self.model = Vocos(in_channels, vocos_dim, vocos_intermediate_dim, vocos_num_layers, n_fft, hop_size, padding)
        for m in self.quantizer.modules():  # biases 0; weight-norm weights keep torch's init (docs/reference.md Q2)
            if isinstance(m, nn.Conv1d) and m.bias.device.type != "meta":
                nn.init.zeros_(m.bias)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (b, in_channels, t) -> waveform (b, 1, t * hop_size)."""
        return self.model(emb).unsqueeze(1)

    def quantize(self, z: torch.Tensor, n_quantizers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode quantisation: z (b, c, t) -> (quantized (b, c, t), codes (q, b, t))."""
        was_training = self.quantizer.training
        self.quantizer.eval()
        try:
            quantized, codes, *_ = self.quantizer(z, n_quantizers)
        finally:
            self.quantizer.train(was_training)
        return quantized, codes

    def vq2emb(self, codes: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """codes (q, b, t) -> summed stage embeddings (b, in_channels, t)."""
        return self.quantizer.vq2emb(codes, n_quantizers)


# ------------------------------------------------------------------------------------------------
# Encoder + decoder, as trained


class AcousticCodec(nn.Module):
    """The two published modules trained together: `encoder` (acoustic_codec/model.safetensors) and
    `decoder` (model_1.safetensors: quantizer + Vocos).

        wav (b,1,n) -> encoder -> z (b,c,t) -> residual VQ -> quantized (b,c,t), codes (q,b,t) -> Vocos -> (b,1,t*hop)

    Args:
        encoder, decoder: constructor arguments of CodecEncoder / CodecDecoder (empty: the released sizes).
    """

    def __init__(self, encoder: dict | None = None, decoder: dict | None = None):
        super().__init__()
        self.encoder = CodecEncoder(**(encoder or {}))
        self.decoder = CodecDecoder(**(decoder or {}))
        if self.encoder.hop_length != self.decoder.hop_size:
            raise ValueError(f"AcousticCodec: encoder hop {self.encoder.hop_length} (prod of up_ratios) != decoder "
                             f"hop_size {self.decoder.hop_size}")
        self.hop_length = self.encoder.hop_length

    def forward(self, wav: torch.Tensor):
        """wav (b, 1, n), n a multiple of hop_length -> (wav_hat (b, 1, n), codes (q, b, t),
        commit_losses (q,), codebook_losses (q,))."""
        if wav.shape[-1] % self.hop_length:
            raise ValueError(f"AcousticCodec: {wav.shape[-1]} samples is not a multiple of the hop {self.hop_length}")
        z = self.encoder(wav)
        quantized, codes, commit, book, _ = self.decoder.quantizer(z)
        return self.decoder(quantized), codes, commit, book
