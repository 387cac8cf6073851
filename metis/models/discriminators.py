"""Discriminators of the acoustic codec's GAN training: multi-period (MPD) and multi-band multi-scale
STFT (MBD), as the MaskGCT codec is trained (docs/reference.md §10.2.2: "MPD plus multi-band multi-scale
STFT discriminator").

    MPD, one per period p:  wav (b,1,n) -> pad to a multiple of p -> (b,1,n/p,p)
                            -> 4 x [Conv2d (k,1) stride (3,1) + LeakyReLU] -> Conv2d (k,1) + LeakyReLU
                            -> Conv2d (3,1) -> logits (b,1,n',p)
    MBD, one per window w:  wav -> STFT (hop w/4) -> (real, imag) as 2 channels (b,2,t,f)
                            -> split f into bands -> per band 4 x [Conv2d (3,9) + LeakyReLU] -> Conv2d (3,3)
                            -> concat bands along f -> Conv2d (3,3) -> logits (b,1,t,f')

Every sub-discriminator returns its feature maps (each conv's activation) and its logits; the
feature maps feed the feature-matching loss, the logits the least-squares adversarial loss
(`metis.lightning.codec_losses`). All convolutions are weight-normalised (torch parametrizations:
the discriminators are never published, so their key names are free).

Axes: b batch, n samples, p period, t STFT frames, f frequency bins, c channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LEAK = 0.1  # LeakyReLU slope of HiFi-GAN / DAC discriminators
Features = list[torch.Tensor]  # feature maps of one sub-discriminator; the last one is its logits


def _conv2d(*args, **kwargs) -> nn.Conv2d:
    return weight_norm(nn.Conv2d(*args, **kwargs))


class PeriodDiscriminator(nn.Module):
    """Looks at every p-th sample: the waveform folded into a (n/p, p) image, convolved along n/p only.

    Args:
        period: p.
        channels: widths of the strided convs (HiFi-GAN: 32, 128, 512, 1024), then one more at the last width.
        kernel_size: along time.
    """

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024), kernel_size: int = 5):
        super().__init__()
        self.period = period
        pad = (kernel_size // 2, 0)
        widths = [1, *channels]
        self.convs = nn.ModuleList(
            _conv2d(c_in, c_out, (kernel_size, 1), (3, 1), padding=pad) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.convs.append(_conv2d(widths[-1], widths[-1], (kernel_size, 1), 1, padding=pad))
        self.post = _conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, wav: torch.Tensor) -> Features:
        """wav (b, 1, n) -> feature maps [(b, c_i, n_i, p)] + logits (b, 1, n', p)."""
        b, _, n = wav.shape
        x = F.pad(wav, (0, (-n) % self.period), mode="reflect")
        x = x.view(b, 1, -1, self.period)  # (b, 1, n/p, p)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAK)
            feats.append(x)
        feats.append(self.post(x))
        return feats


class BandedSTFTDiscriminator(nn.Module):
    """One STFT resolution: a complex spectrogram split into frequency bands, each with its own conv
    stack (low and high bands look different), then one conv over the re-joined bands.

    Args:
        window_length: STFT window (hop = window / 4).
        sample_rate: to place the band edges.
        bands: band edges as fractions of the bins (DAC: 0, .1, .25, .5, .75, 1).
        channels: width of every conv.
    """

    def __init__(self, window_length: int, bands: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0), channels: int = 32):
        super().__init__()
        self.window_length = window_length
        self.hop_length = window_length // 4
        n_bins = window_length // 2 + 1
        edges = [int(round(e * n_bins)) for e in bands]
        self.bands = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]
        self.register_buffer("window", torch.hann_window(window_length), persistent=False)

        def stack() -> nn.ModuleList:
            # stride 2 along frequency after the first conv: each band shrinks 8x
            return nn.ModuleList([
                _conv2d(2, channels, (3, 9), 1, padding=(1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(channels, channels, (3, 3), 1, padding=(1, 1)),
            ])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.post = _conv2d(channels, 1, (3, 3), 1, padding=(1, 1))

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (b, 1, n) -> (b, 2, t, f): real and imaginary parts, time before frequency."""
        spec = torch.stft(wav[:, 0].float(), self.window_length, self.hop_length, window=self.window,
                          center=True, return_complex=True)  # (b, f, t)
        return torch.view_as_real(spec).permute(0, 3, 2, 1)  # (b, 2, t, f)

    def forward(self, wav: torch.Tensor) -> Features:
        """wav (b, 1, n) -> feature maps of every band and layer + logits (b, 1, t, f')."""
        x = self.spectrogram(wav)
        feats, outs = [], []
        for (lo, hi), convs in zip(self.bands, self.band_convs):
            h = x[..., lo:hi]
            for conv in convs:
                h = F.leaky_relu(conv(h), LEAK)
                feats.append(h)
            outs.append(h)
        feats.append(self.post(torch.cat(outs, dim=-1)))
        return feats


class CodecDiscriminator(nn.Module):
    """All sub-discriminators of the codec's GAN: MPD periods + MBD windows.

    Args:
        periods: MPD periods (HiFi-GAN/DAC: 2, 3, 5, 7, 11).
        period_channels: widths of each period discriminator's strided convs.
        stft_windows: MBD window lengths at 24 kHz (DAC: 2048, 1024, 512).
        stft_channels: width of the MBD convs.
        bands: MBD band edges (fractions of the bins).
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), period_channels: Sequence[int] = (32, 128, 512, 1024),
                 stft_windows: Sequence[int] = (2048, 1024, 512), stft_channels: int = 32,
                 bands: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, tuple(period_channels)) for p in periods]
            + [BandedSTFTDiscriminator(w, tuple(bands), stft_channels) for w in stft_windows]
        )

    def forward(self, wav: torch.Tensor) -> list[Features]:
        """wav (b, 1, n) -> per sub-discriminator its feature maps, logits last."""
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"CodecDiscriminator expects a waveform (b, 1, n), got shape {tuple(wav.shape)}")
        return [d(wav) for d in self.discriminators]
