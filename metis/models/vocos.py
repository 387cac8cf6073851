"""Vocos ConvNeXt backbone and its ISTFT head (docs/reference.md §4.4, §5.3).

The backbone is shared by the semantic codec (RepCodec encoder and decoder) and the acoustic codec
decoder; the ISTFT head turns its frames into a 24 kHz waveform in the acoustic decoder. Parameter
names follow the published checkpoints (`embed`, `norm`, `convnext.{i}.*`, `final_layer_norm`,
`head.out`, `head.istft.window`).

Axes: b batch, t frames, c input channels, d backbone width, i intermediate width, f frequency bins
(n_fft/2 + 1), w window length, n samples.

    x (b,c,t) -> embed conv k7 -> LN -> N x ConvNeXt -> LN -> (b,t,d)
    ConvNeXt: x + gamma * pwconv2(gelu(pwconv1(LN(dwconv(x)))))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNeXtBlock(nn.Module):
    """Depthwise conv k7 -> LayerNorm -> Linear(d->i) -> GELU -> Linear(i->d) -> * gamma, residual."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale_init_value: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()  # exact erf form
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, d, t) -> (b, d, t)."""
        y = self.dwconv(x).transpose(1, 2)  # (b, t, d)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class VocosBackbone(nn.Module):
    """Conv embedding + LayerNorm + `num_layers` ConvNeXt blocks + final LayerNorm.

    Args:
        input_channels: c, channels of the input (b, c, t).
        dim: d, backbone width.
        intermediate_dim: i, ConvNeXt MLP width.
        num_layers: number of ConvNeXt blocks; each block's `gamma` starts at 1/num_layers.
    """

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, 1.0 / num_layers) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv1d, nn.Linear)) and m.weight.device.type != "meta":
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, c, t) -> (b, t, d). Note the layout change: channels-first in, channels-last out."""
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)  # (b, d, t)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: exactly `hop_length` samples per frame.

    torch.istft cannot do this: with center=True it trims n_fft/2 per side (not (w - hop)/2), and
    with center=False its NOLA check fails on the zero ends of the Hann envelope. So the overlap-add
    is written out: irfft per frame * window, fold, trim (w - hop)/2 each side, divide by the
    overlap-added squared window.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None, padding: str = "same"):
        super().__init__()
        if padding != "same":
            raise ValueError(f"ISTFT padding={padding!r}: only 'same' (the released decoder's) is implemented")
        if n_fft % 2:
            raise ValueError(f"ISTFT n_fft={n_fft}: must be even")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length or n_fft
        if (self.win_length - hop_length) % 2:
            raise ValueError(f"ISTFT: win_length - hop_length = {self.win_length - hop_length} must be even for 'same' padding")
        # Persistent: the released decoder checkpoint stores it (docs/reference.md Q15).
        self.register_buffer("window", torch.hann_window(self.win_length))  # periodic Hann

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (b, f, t) complex -> (b, t * hop_length) real."""
        b, _, t = spec.shape
        w, hop = self.win_length, self.hop_length
        pad = (w - hop) // 2
        frames = torch.fft.irfft(spec, self.n_fft, dim=1) * self.window[None, :, None]  # (b, w, t)
        n_full = (t - 1) * hop + w
        fold = dict(output_size=(1, n_full), kernel_size=(1, w), stride=(1, hop))
        y = F.fold(frames, **fold)[:, 0, 0, pad : n_full - pad]  # (b, t * hop)
        env = F.fold(self.window.square()[None, :, None].expand(1, w, t), **fold)[0, 0, 0, pad : n_full - pad]
        return y / env


class ISTFTHead(nn.Module):
    """Linear(d -> n_fft + 2) -> (log-magnitude, phase) -> complex spectrum -> ISTFT."""

    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: str = "same"):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length, n_fft, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, t, d) -> waveform (b, t * hop_length)."""
        log_mag, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)  # (b, f, t) each
        mag = log_mag.exp().clamp(max=100.0)  # clip guards against exploding magnitudes
        return self.istft(torch.polar(mag, phase))
