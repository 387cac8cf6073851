"""Intrusive metrics: the generated waveform against a clean reference of the same utterance.

PESQ (ITU-T P.862, wide band at 16 kHz, narrow band at 8 kHz), STOI/ESTOI and SI-SDR/SDR, through
torchmetrics' functional API (which wraps the ``pesq`` and ``pystoi`` packages).
Both signals are resampled to the metric's rate and trimmed to their common length when they differ
by at most `LENGTH_TOLERANCE` (a few samples off is normal); further apart, the pair is not scored (an
error for that item, counted in the report) instead of being cut to the shorter one, which would score
a 600 s output against a 3 s reference as perfect.
"""
from __future__ import annotations

import numpy as np
import torch

from metis.audio import Audio, resample
from metis.eval.metrics.base import Metric, require


LENGTH_TOLERANCE = (0.25, 0.05)  # seconds, fraction of the reference: whichever is larger


def _pair(wav: np.ndarray, sr: int, reference: Audio, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    est = resample(wav, sr, rate)
    ref = reference.at(rate) if isinstance(reference, Audio) else resample(reference[0], reference[1], rate)
    apart, allowed = abs(len(est) - len(ref)), max(LENGTH_TOLERANCE[0] * rate, LENGTH_TOLERANCE[1] * len(ref))
    if apart > allowed:
        raise ValueError(f"length mismatch: output {len(est) / rate:.2f} s vs reference {len(ref) / rate:.2f} s "
                         f"(more than {LENGTH_TOLERANCE[0]} s or {LENGTH_TOLERANCE[1]:.0%} apart): not scored")
    n = min(len(est), len(ref))  # generated audio is often a few samples off (within the tolerance above)
    if n == 0:
        raise ValueError("cannot compare an empty waveform")
    est, ref = est[:n], ref[:n]
    return torch.from_numpy(est.astype(np.float64)), torch.from_numpy(ref.astype(np.float64))


class PESQ(Metric):
    """PESQ MOS-LQO; ``pesq_wb`` in [1.04, 4.64] and ``pesq_nb`` in [1.02, 4.55]."""

    name = "pesq"
    needs = ("reference",)

    def __init__(self, modes: tuple[str, ...] = ("wb", "nb")):
        bad = set(modes) - {"wb", "nb"}
        if bad or not modes:
            raise ValueError(f"PESQ modes must be 'wb' and/or 'nb', got {modes}")
        self.modes = tuple(modes)
        self.description = f"PESQ P.862 ({'/'.join(self.modes)}; wb at 16 kHz, nb at 8 kHz)"

    def check(self) -> None:
        require("pesq", "pesq")

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        from torchmetrics.functional.audio.pesq import perceptual_evaluation_speech_quality

        out = {}
        for mode in self.modes:
            rate = 16000 if mode == "wb" else 8000
            est, ref = _pair(wav, sr, reference, rate)
            out[f"pesq_{mode}"] = float(perceptual_evaluation_speech_quality(est, ref, rate, mode))
        return out


class STOI(Metric):
    """STOI and extended STOI (pystoi resamples to 10 kHz itself); both in [0, 1]."""

    name = "stoi"
    needs = ("reference",)
    description = "STOI / ESTOI (pystoi)"

    def check(self) -> None:
        require("pystoi", "pystoi")

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        from torchmetrics.functional.audio.stoi import short_time_objective_intelligibility as stoi

        est, ref = _pair(wav, sr, reference, reference[1])
        rate = int(reference[1])
        return {
            "stoi": float(stoi(est, ref, rate, extended=False)),
            "estoi": float(stoi(est, ref, rate, extended=True)),
        }


class SISDR(Metric):
    """Scale-invariant SDR and BSS-eval SDR in dB, at the reference's rate."""

    name = "sisdr"
    needs = ("reference",)
    description = "SI-SDR / SDR in dB (torchmetrics)"

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        from torchmetrics.functional.audio import (
            scale_invariant_signal_distortion_ratio,
            signal_distortion_ratio,
        )

        est, ref = _pair(wav, sr, reference, reference[1])
        return {
            "si_sdr": float(scale_invariant_signal_distortion_ratio(est, ref)),
            "sdr": float(signal_distortion_ratio(est, ref)),
        }


class MelDistance(Metric):
    """Mean absolute log10-mel difference (80 bins, 1024-point FFT, hop 256, at the reference's rate):
    the codec literature's spectral distance; 0 for identical audio, lower is better."""

    name = "mel"
    needs = ("reference",)
    description = "log-mel L1 distance (80 mels, n_fft 1024, hop 256)"

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        import torchaudio

        rate = int(reference[1])
        est, ref = _pair(wav, sr, reference, rate)
        mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=1024, hop_length=256, n_mels=80, power=1.0)
        a = mel(est.float()).clamp(min=1e-5).log10()
        b = mel(ref.float()).clamp(min=1e-5).log10()
        return {"mel_distance": float((a - b).abs().mean())}
