"""Shared signals for the eval tests: real LibriTTS clips from ../shared/audio (skipped when absent)
and generated speech-like signals with known properties."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests import SHARED_AUDIO

CLIPS = {
    "260": "libritts_260_123440_000010_000004",
    "5142": "libritts_5142_33396_000002_000004",
    "6829": "libritts_6829_68771_000027_000000",
    "7176": "libritts_7176_92135_000004_000000",
}


def shared_clip(speaker: str) -> tuple[np.ndarray, int, str]:
    """(samples, sr, transcript) of the LibriTTS clip of ``speaker``; skips when ../shared/audio is absent."""
    wav = SHARED_AUDIO / f"{CLIPS[speaker]}.wav"
    if not wav.is_file():
        pytest.skip(f"real speech not available: {wav} is absent (../shared/audio lives beside the project)")
    x, sr = sf.read(str(wav), dtype="float32")
    return x, sr, wav.with_suffix(".txt").read_text(encoding="utf-8").strip()


def speechlike(seconds: float = 3.0, sr: int = 16000, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-rate modulated harmonic signal with a wandering pitch and short pauses:
    enough structure for PESQ's voice activity detection and STOI's envelopes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    x = sum((1.0 / k) * np.sin(k * phase + rng.uniform(0, 6)) for k in range(1, 25) if k * f0 < sr / 2.2)
    envelope = np.clip(np.sin(2 * np.pi * 3.5 * t + rng.uniform(0, 6)), 0, None) ** 0.6
    x = x * envelope
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    """``x`` plus white noise scaled to ``snr_db`` (power ratio over the whole clip)."""
    n = np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)
    n *= np.sqrt(np.mean(x.astype(np.float64) ** 2) / (np.mean(n.astype(np.float64) ** 2) * 10 ** (snr_db / 10)))
    return (x + n).astype(np.float32)
