"""Audio files that `metis.audio.check` must refuse, each with the reason it is refused under: the
cases every consumer of audio (loader, tokenize, stats, prepare, infer, condition banks, eval) is
tested with."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def _speechlike(n: int, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def bad_signals(seconds: float = 1.0, sr: int = SR) -> dict[str, tuple[np.ndarray, str, str]]:
    """name -> (samples, soundfile subtype, the reason `check` gives)."""
    n = int(seconds * sr)
    nan = _speechlike(n, sr)
    nan[n // 3: n // 3 + 200] = np.nan
    return {
        # what a NaN buffer becomes when written as 16-bit PCM: every sample -32768 = -1.0
        "minus_one_int16": (np.full(n, -1.0, np.float32), "PCM_16", "clipped_audio"),
        "dc": (np.full(n, 0.25, np.float32), "FLOAT", "constant_audio"),
        "dc_int16": (np.full(n, 0.25, np.float32), "PCM_16", "constant_audio"),
        # a tone driven 40 dB into the rails: flat at +-1 nearly everywhere
        "clipped_flat": (np.clip(100 * _speechlike(n, sr), -1, 1), "PCM_16", "clipped_audio"),
        "nan": (nan, "FLOAT", "nan_audio"),
        "all_nan": (np.full(n, np.nan, np.float32), "FLOAT", "nan_audio"),
        "silent": (np.zeros(n, np.float32), "PCM_16", "silent_audio"),
        "empty": (np.zeros(0, np.float32), "PCM_16", "empty_audio"),
    }


def bad_wav_bytes(name: str, seconds: float = 1.0, sr: int = SR) -> bytes:
    wav, subtype, _ = bad_signals(seconds, sr)[name]
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def write_bad_wavs(folder: Path, seconds: float = 1.0, sr: int = SR,
                   names: tuple[str, ...] | None = None) -> dict[str, tuple[Path, str]]:
    """Write the bad cases as `{folder}/{name}.wav`; name -> (path, reason)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (_, _, reason) in bad_signals(seconds, sr).items():
        if names is None or name in names:
            path = folder / f"{name}.wav"
            path.write_bytes(bad_wav_bytes(name, seconds, sr))
            out[name] = (path, reason)
    return out
