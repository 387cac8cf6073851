"""Losses of codec training (docs/reference.md §10.2.1, §10.2.2).

Acoustic codec (weights of the MaskGCT codec: λrec 10, λadv 2, λfeat 2, codebook 1, commitment 0.25;
the last two live in the quantizer, `metis.models.acoustic_codec.FactorizedVQ`):

    mel      sum over scales s of  mean |log10 max(mel_s(x̂), ε) - log10 max(mel_s(x), ε)|
    adv (G)  sum over sub-discriminators k of  mean (1 - D_k(x̂))²                (least squares)
    adv (D)  sum over k of  mean (1 - D_k(x))² + mean D_k(x̂)²
    feat     mean over k and layers l of  mean |F_kl(x) - F_kl(x̂)| / mean |F_kl(x)|   (relative)

Semantic codec: L1 between the normalised SSL features and their reconstruction (+ the quantizer's
codebook and commitment losses).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchaudio
from torch import nn

from metis.models.discriminators import Features


class MultiScaleMelLoss(nn.Module):
    """L1 between log-mel spectrograms at several resolutions (window w, hop w/4, m mel bins each).

    Small windows pin down timing, large ones pitch and harmonics; DAC's seven scales (5 bins at 32
    samples up to 320 bins at 2048) are the default.

    Args:
        sample_rate: of the waveforms.
        n_mels, window_lengths: one pair per scale.
        clamp_eps: floor before the log (silence would otherwise dominate).
    """

    def __init__(self, sample_rate: int = 24000, n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
                 window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048), clamp_eps: float = 1e-5):
        super().__init__()
        if len(n_mels) != len(window_lengths):
            raise ValueError(f"n_mels {list(n_mels)} and window_lengths {list(window_lengths)} must pair up")
        self.clamp_eps = clamp_eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # small windows leave some of many mel filters empty: harmless
            self.mels = nn.ModuleList(
                torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=w, win_length=w, hop_length=w // 4, n_mels=m,
                                                     power=1.0, norm="slaney", mel_scale="slaney", center=True)
                for m, w in zip(n_mels, window_lengths)
            )

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_hat, x (b, 1, n) -> scalar: the sum over scales of the mean log-mel L1."""
        loss = x.new_zeros(())
        for mel in self.mels:
            a = mel(x_hat.float()).clamp(min=self.clamp_eps).log10()
            b = mel(x.float()).clamp(min=self.clamp_eps).log10()
            loss = loss + (a - b).abs().mean()
        return loss


def discriminator_loss(real: list[Features], fake: list[Features]) -> torch.Tensor:
    """Least-squares GAN loss of the discriminators: real logits -> 1, fake logits -> 0."""
    loss = real[0][-1].new_zeros(())
    for r, f in zip(real, fake):
        loss = loss + (1 - r[-1]).pow(2).mean() + f[-1].pow(2).mean()
    return loss


def generator_adversarial_loss(fake: list[Features]) -> torch.Tensor:
    """Least-squares GAN loss of the generator: fake logits -> 1."""
    loss = fake[0][-1].new_zeros(())
    for f in fake:
        loss = loss + (1 - f[-1]).pow(2).mean()
    return loss


def feature_matching_loss(real: list[Features], fake: list[Features]) -> torch.Tensor:
    """Relative feature matching: per feature map, L1 distance divided by the real map's mean magnitude
    (every layer counts alike whatever its scale), averaged over all maps but the logits."""
    total, count = real[0][0].new_zeros(()), 0
    for r, f in zip(real, fake):
        for fr, ff in zip(r[:-1], f[:-1]):
            fr = fr.detach()
            total = total + (fr - ff).abs().mean() / fr.abs().mean().clamp(min=1e-8)
            count += 1
    return total / max(count, 1)


def feature_l1_loss(x_rec: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |x_rec - x| over valid frames: x_rec, x (b, t, h), mask (b, t) 1 = valid (None: all)."""
    err = (x_rec - x).abs().mean(-1)  # (b, t)
    if mask is None:
        return err.mean()
    return (err * mask).sum() / mask.sum().clamp(min=1)
