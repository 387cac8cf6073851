"""Channel distortions for speech enhancement: hard clipping and band-limiting. Pure functions."""

from __future__ import annotations

from fractions import Fraction

import torch
import torchaudio.functional as AF

from metis.conditions.signal import as_wave

# Sharper than torchaudio's default (Hann, width 6): a Kaiser-windowed sinc, 64 zero crossings,
# with the pass band ending at 95% of the new Nyquist, leaves < 1e-4 of the energy above the cutoff.
_KAISER = dict(lowpass_filter_width=64, rolloff=0.95, resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


def clip(wav: torch.Tensor, threshold: float) -> torch.Tensor:
    """(n,) -> (n,) hard-clipped to [-threshold, threshold] (an overloaded recording chain).

    Raises:
        ValueError: threshold <= 0, or bad audio.
    """
    wav = as_wave(wav, "wav")
    if not threshold > 0:
        raise ValueError(f"clip: threshold must be > 0, got {threshold!r}")
    return wav.clamp(-float(threshold), float(threshold))


def peak_threshold(wav: torch.Tensor, level_db: float) -> float:
    """The absolute clipping threshold `level_db` dB below the peak of `wav` (level_db <= 0)."""
    return float(wav.abs().max()) * 10.0 ** (float(level_db) / 20.0)


def band_limit(wav: torch.Tensor, cutoff_hz: float, sample_rate: int = 16000) -> torch.Tensor:
    """(n,) -> (n,): what a recording at 2·cutoff_hz Hz sounds like at `sample_rate`: resampled
    down to 2·cutoff_hz and back up (windowed-sinc low-pass both ways, no aliasing), so the output
    has (almost) no energy above `cutoff_hz`.

    Raises:
        ValueError: cutoff_hz not in (0, sample_rate / 2), or bad audio.
    """
    wav = as_wave(wav, "wav")
    nyquist = sample_rate / 2
    if not 0 < cutoff_hz < nyquist:
        raise ValueError(f"band_limit: cutoff {cutoff_hz!r} Hz must lie in (0, {nyquist:g}) Hz, "
                         f"the Nyquist band of {sample_rate} Hz audio")
    ratio = Fraction(2 * cutoff_hz / sample_rate).limit_denominator(1000)  # low rate / sample_rate
    low, high = ratio.numerator, ratio.denominator
    down = AF.resample(wav, high, low, **_KAISER)
    up = AF.resample(down, low, high, **_KAISER)
    n = wav.shape[0]
    return up[:n] if up.shape[0] >= n else torch.nn.functional.pad(up, (0, n - up.shape[0]))
