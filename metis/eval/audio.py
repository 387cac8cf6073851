"""Audio values passed between the eval pieces: a waveform with its rate, loading and resampling.

Only soundfile and torchaudio's DSP are used (torchaudio's own load/save need torchcodec).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class Audio(NamedTuple):
    """A mono float32 waveform in [-1, 1] and its sample rate. A plain ``(samples, sr)`` tuple works too."""

    samples: np.ndarray
    sr: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sr

    def at(self, sr: int) -> np.ndarray:
        """The samples resampled to ``sr`` (float32, mono)."""
        return resample(self.samples, self.sr, sr)


def as_mono(samples: np.ndarray) -> np.ndarray:
    """(time,) or (time, channels) -> (time,) float32, channels averaged."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"expected a (time,) or (time, channels) waveform, got shape {x.shape}")
    return x


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    x = as_mono(samples)
    if sr_in == sr_out:
        return x
    y = AF.resample(torch.from_numpy(x), int(sr_in), int(sr_out))
    return y.numpy().astype(np.float32, copy=False)


def load(path: str | Path) -> Audio:
    """Read a mono waveform (stereo is averaged); a missing file raises naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile's errors do not always name the file
        raise RuntimeError(f"cannot read audio file {path}: {e}") from e
    return Audio(as_mono(x), int(sr))


@lru_cache(maxsize=256)
def load_cached(path: str) -> Audio:
    """``load`` for files read many times in one run (prompts shared by several utterances)."""
    return load(path)


def save(path: str | Path, audio: Audio) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio.samples, dtype=np.float32), int(audio.sr))


def align(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trim two waveforms to their common length (generated audio is often a few samples off)."""
    n = min(len(a), len(b))
    if n == 0:
        raise ValueError("cannot compare an empty waveform")
    return a[:n], b[:n]
