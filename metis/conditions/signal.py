"""Level arithmetic on mono waveforms: power, SNR, scaling a second signal to a target SNR/SIR,
cropping/looping to a length. Pure functions; audio is a float tensor (n,)."""

from __future__ import annotations

import math

import torch

from metis.conditions import _random as R

# Below this mean power (about -100 dBFS) a signal counts as silent: no SNR can be set against it.
SILENCE_POWER = 1e-10


def as_wave(x: torch.Tensor, name: str = "audio") -> torch.Tensor:
    """Check `x` is a non-empty, finite, 1-D tensor; return it as float32. Errors name `name`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name}: expected mono audio of shape (n,), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: zero-length audio")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: audio contains NaN/inf samples")
    return x


def power(x: torch.Tensor) -> float:
    """Mean square of (n,)."""
    return float(x.double().pow(2).mean())


def snr_db(signal: torch.Tensor, noise: torch.Tensor) -> float:
    """10·log10(P_signal / P_noise) in dB over the whole signals (inf for silent noise)."""
    ps, pn = power(as_wave(signal, "signal")), power(as_wave(noise, "noise"))
    if pn == 0.0:
        return math.inf
    if ps == 0.0:
        return -math.inf
    return 10.0 * math.log10(ps / pn)


def gain_for_snr(signal: torch.Tensor, noise: torch.Tensor, snr: float) -> float:
    """The amplitude gain g such that snr_db(signal, g·noise) == snr.

    Raises:
        ValueError: signal or noise is silent (mean power below SILENCE_POWER).
    """
    ps, pn = power(signal), power(noise)
    if ps < SILENCE_POWER:
        raise ValueError(f"cannot set an SNR against a silent signal (power {ps:.3g})")
    if pn < SILENCE_POWER:
        raise ValueError(f"cannot scale a silent noise/interferer to an SNR (power {pn:.3g})")
    return math.sqrt(ps / (pn * 10.0 ** (snr / 10.0)))


def fit_length(x: torch.Tensor, n: int, offset: int = 0) -> torch.Tensor:
    """(m,) -> (n,): the n samples of the periodic extension of `x` starting at `offset` (mod m),
    i.e. a crop when m >= n and a loop when m < n."""
    m = x.shape[0]
    offset %= m
    if offset + n <= m:
        return x[offset:offset + n]
    reps = math.ceil((offset + n) / m)
    return x.repeat(reps)[offset:offset + n]


def random_fit(x: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """fit_length with a random offset drawn from `generator`; returns (segment (n,), offset)."""
    offset = R.randint(generator, x.shape[0])
    return fit_length(x, n, offset), offset


def mix_at_snr(clean: torch.Tensor, noise: torch.Tensor, snr: float) -> torch.Tensor:
    """clean (n,) + noise scaled so that the mixture has SNR `snr` dB w.r.t. `clean`.

    `noise` (m,) is cropped (m > n) or looped (m < n) from its start to n samples.

    Raises:
        ValueError: empty/non-finite input, or silent clean/noise.
    """
    clean = as_wave(clean, "clean")
    noise = fit_length(as_wave(noise, "noise"), clean.shape[0])
    return clean + gain_for_snr(clean, noise, float(snr)) * noise
