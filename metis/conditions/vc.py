"""Voice-conversion training pairs: perturb the timbre of the target speech, keep its content.

Two independent, signal-processing-only changes (no VC model, no vocoder):
  * pitch shift by `s` semitones: phase-vocoder time-stretch by p = 2^(s/12), then resampling back
    to the original length (moves F0 *and* formants by p);
  * spectral-envelope warp: the cepstrally smoothed log-spectral envelope of every STFT frame is
    stretched along frequency so that, overall, formants move by `formant_shift` (the pitch
    harmonics stay where step 1 put them).
With formant_shift == 2^(s/12) this is FreeVC's spectrogram-resize augmentation (a vertical resize of
the spectrogram), cited by MaskGCT; drawing the two independently decouples pitch from timbre.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torchaudio.functional as AF

from metis.conditions import _random as R
from metis.conditions.signal import as_wave


def _stft(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    return torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True)


def _istft(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    return torch.istft(spec, n_fft, hop, window=torch.hann_window(n_fft), center=True, length=length)


def _fix(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[:n] if x.shape[0] >= n else torch.nn.functional.pad(x, (0, n - x.shape[0]))


def pitch_shift(wav: torch.Tensor, semitones: float, sample_rate: int = 16000, n_fft: int = 1024,
                hop: int = 256) -> tuple[torch.Tensor, float]:
    """(n,) -> ((n,), achieved ratio): F0 and formants scaled by ≈ 2^(semitones/12) (the ratio is
    approximated by a fraction with denominator <= 64 for the resampler; the achieved one is returned)."""
    n = wav.shape[0]
    ratio = Fraction(2.0 ** (semitones / 12.0)).limit_denominator(64)
    if ratio == 1:
        return wav.clone(), 1.0
    spec = _stft(wav, n_fft, hop)  # (F, T)
    advance = torch.linspace(0, math.pi * hop, spec.shape[0])[..., None]
    stretched = AF.phase_vocoder(spec, 1.0 / float(ratio), advance)  # duration × ratio
    y = _istft(stretched, n_fft, hop, length=int(round(n * float(ratio))))
    # play it back `ratio` times faster: resample from ratio·sr to sr
    y = AF.resample(y, ratio.numerator, ratio.denominator)
    return _fix(y, n), float(ratio)


def true_envelope(log_mag: torch.Tensor, n_fft: int, order: int, iterations: int = 8) -> torch.Tensor:
    """(F, T) log magnitudes -> (F, T) smooth log envelope through the spectral peaks: the cepstrum
    liftered to `order` coefficients, iterated on max(log_mag, envelope) ("true envelope"), so the
    envelope rides on the harmonics instead of averaging the troughs between them."""
    lift = torch.zeros(n_fft, 1)
    lift[:order] = 1.0
    lift[n_fft - order + 1:] = 1.0
    target = log_mag
    env = log_mag
    for _ in range(max(1, iterations)):
        env = torch.fft.rfft(torch.fft.irfft(target, n=n_fft, dim=0) * lift, dim=0).real
        target = torch.maximum(log_mag, env)
    return env


def warp_envelope(wav: torch.Tensor, warp: float, sample_rate: int = 16000, n_fft: int = 1024, hop: int = 256,
                  lifter_ms: float = 1.6, iterations: int = 8) -> torch.Tensor:
    """(n,) -> (n,): each frame's spectral envelope E(f) (`true_envelope`, cepstrum liftered below
    `lifter_ms`) replaced by E(f / warp), the fine (harmonic) structure and the phase kept.
    warp > 1 moves formants up."""
    n = wav.shape[0]
    if warp == 1.0:
        return wav.clone()
    spec = _stft(wav, n_fft, hop)  # (F, T)
    n_bins = spec.shape[0]
    log_mag = torch.log(spec.abs().clamp_min(1e-7))
    env = true_envelope(log_mag, n_fft, max(2, int(lifter_ms * 1e-3 * sample_rate)), iterations)
    src = (torch.arange(n_bins, dtype=torch.float32) / warp).clamp(max=n_bins - 1)
    i0 = src.floor().long().clamp(max=n_bins - 2)
    frac = (src - i0)[:, None]
    env_w = env[i0] * (1 - frac) + env[i0 + 1] * frac
    out = spec * torch.exp(env_w - env)
    return _istft(out, n_fft, hop, length=n)


def perturb_timbre(wav: torch.Tensor, formant_shift: float = 1.0, pitch_semitones: float = 0.0,
                   sample_rate: int = 16000) -> tuple[torch.Tensor, float]:
    """(n,) -> ((n,), achieved pitch ratio): pitch by `pitch_semitones`, formants by `formant_shift`
    overall. Exactly the input for (1.0, 0.0). Output peak is kept at the input's peak."""
    x = as_wave(wav, "wav")
    if not formant_shift > 0:
        raise ValueError(f"perturb_timbre: formant_shift must be > 0, got {formant_shift!r}")
    y, ratio = pitch_shift(x, pitch_semitones, sample_rate)
    y = warp_envelope(y, formant_shift / ratio, sample_rate)
    if ratio != 1.0 or formant_shift != 1.0:
        peak_in, peak_out = float(x.abs().max()), float(y.abs().max())
        if peak_out > 0:
            y = y * (peak_in / peak_out)
    return y, ratio


class VCPerturber:
    """Draws a formant shift (log-uniform in `formant_shift`) and a pitch shift (uniform in
    `pitch_shift_semitones`) per call; with probability 1 - p the input is returned unchanged.

    Defaults: formants ×0.85..1.15 (FreeVC's resize range), pitch ±4 semitones.
    """

    def __init__(self, formant_shift: tuple[float, float] = (0.85, 1.15),
                 pitch_shift_semitones: tuple[float, float] = (-4.0, 4.0), sample_rate: int = 16000, p: float = 1.0):
        self.formant_shift = R.check_range("formant_shift", formant_shift)
        if self.formant_shift[0] <= 0:
            raise ValueError(f"formant_shift must be positive ratios, got {formant_shift!r}")
        self.pitch_shift_semitones = R.check_range("pitch_shift_semitones", pitch_shift_semitones)
        self.sample_rate = int(sample_rate)
        self.p = R.check_prob("p", p)

    def __call__(self, wav: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """wav (n,) -> (perturbed (n,), info: formant_shift, pitch_semitones, pitch_ratio, perturbed)."""
        x = as_wave(wav, "wav")
        apply = R.bernoulli(generator, self.p)
        alpha = R.log_uniform(generator, *self.formant_shift)
        semis = R.uniform(generator, *self.pitch_shift_semitones)
        if not apply:
            return x.clone(), {"perturbed": False, "formant_shift": 1.0, "pitch_semitones": 0.0, "pitch_ratio": 1.0}
        y, ratio = perturb_timbre(x, alpha, semis, self.sample_rate)
        return y, {"perturbed": True, "formant_shift": alpha, "pitch_semitones": semis, "pitch_ratio": ratio}
