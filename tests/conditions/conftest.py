"""Shared signals for the condition tests: a synthetic voiced signal with known F0 and formants,
small audio folders/shards written to tmp, and the real LibriTTS clips (skipped when absent)."""

from __future__ import annotations

import io
import math
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

SR = 16000
from tests import SHARED_AUDIO


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@lru_cache(maxsize=32)
def _vowel(seconds: float, f0: float, formants: tuple, sr: int) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    h = torch.arange(1, int((sr / 2 - 500) / f0) + 1, dtype=torch.float64)  # harmonic numbers
    f = h * f0
    amp = sum(torch.exp(-((f - F) / 150.0) ** 2) for F in formants) + 0.05
    x = (amp[:, None] * torch.sin(2 * math.pi * f[:, None] * t[None] + 0.3 * h[:, None])).sum(0)
    return (0.5 * x / x.abs().max()).float()


def vowel(seconds: float = 1.0, f0: float = 140.0, formants=(500.0, 1500.0, 2500.0), sr: int = SR) -> torch.Tensor:
    """(n,) a steady harmonic 'vowel': F0 `f0`, harmonic amplitudes following Gaussian resonances at
    `formants` (bandwidth 150 Hz) over a small floor, peak 0.5."""
    return _vowel(float(seconds), float(f0), tuple(formants), sr).clone()


def speechlike(seconds: float = 1.0, seed: int = 0, sr: int = SR) -> torch.Tensor:
    """(n,) a syllable-modulated vowel with a random phase of the modulation (a stand-in for speech)."""
    g = gen(seed)
    t = torch.arange(int(seconds * sr)) / sr
    env = torch.sin(2 * math.pi * 3.5 * t + float(torch.rand((), generator=g)) * 6).clamp_min(0) ** 0.6
    return vowel(seconds, f0=110 + 60 * float(torch.rand((), generator=g)), sr=sr) * (0.1 + env)


def f0_autocorr(y: torch.Tensor, sr: int = SR, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """F0 (Hz) of a steady periodic signal: the autocorrelation peak of its central part, with
    parabolic interpolation."""
    y = y[len(y) // 5: -len(y) // 5].double()
    y = y - y.mean()
    ac = torch.fft.irfft(torch.fft.rfft(y, n=2 * len(y)).abs() ** 2)[: len(y)]
    lo, hi = int(sr / fmax), int(sr / fmin)
    k = lo + int(ac[lo:hi].argmax())
    a, b, c = float(ac[k - 1]), float(ac[k]), float(ac[k + 1])
    return sr / (k + 0.5 * (a - c) / (a - 2 * b + c))


def centroid(y: torch.Tensor, sr: int = SR) -> float:
    p = torch.fft.rfft(y.double()).abs() ** 2
    f = torch.fft.rfftfreq(len(y), 1 / sr).double()
    return float((p * f).sum() / p.sum())


def write_wav(path: Path, x: np.ndarray, sr: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr)
    return path


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def wav_bytes(x: np.ndarray, sr: int, fmt: str = "FLAC") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt)
    return buf.getvalue()


def libritts(n: int) -> list[tuple[str, torch.Tensor]]:
    """(speaker, wav at 16 kHz) of the first n shared LibriTTS clips; skips when absent."""
    files = sorted(SHARED_AUDIO.glob("libritts_*.wav"))
    if len(files) < n:
        pytest.skip(f"real speech not available: fewer than {n} libritts_*.wav under {SHARED_AUDIO} "
                    f"(../shared/audio lives beside the project)")
    return [(f.name.split("_")[1], _load16(str(f)).clone()) for f in files[:n]]


@lru_cache(maxsize=8)
def _load16(path: str) -> torch.Tensor:
    from metis.audio import load_tensor

    return load_tensor(path, SR)
