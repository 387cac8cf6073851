"""Audio I/O for all of metis: read, resample, write.

soundfile reads and writes (any format libsndfile knows: wav, flac, ogg, mp3); torchaudio resamples
(band-limited sinc). torchaudio's own load/save are not used: they need torchcodec. Every reader
returns mono float32 and every error names the file (or shard member) it comes from.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from metis.atomic import atomic_write

OUTPUT_SAMPLE_RATE = 24000  # the acoustic codec's rate: every generated wav is written at it
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")

Source = str | os.PathLike | bytes  # a file, or the encoded bytes of one (a shard member)


class AudioError(ValueError):
    """Audio that cannot be used; the message names it, `reason` is the skip-counter reason
    (``undecodable_audio``, ``empty_audio``, ``nan_audio``, ``silent_audio``, ``constant_audio``,
    ``clipped_audio``) data preparation counts it under."""

    def __init__(self, msg: str, reason: str = "undecodable_audio"):
        super().__init__(msg)
        self.reason = reason


# What `check` calls unusable. Real recordings are far from both limits: the quietest file of the
# project's real and demo audio (a recorded "silence" prompt) varies by 9e-5, and the most clipped
# one has 0.015% of its samples at full scale (numbers and how to rerun them: docs/data.md).
MIN_STD = 1e-5  # below a third of one 16-bit step of variation: a constant (DC) signal, not sound
FULL_SCALE = 32767 / 32768  # |sample| at or above the largest positive 16-bit value counts as clipped
MAX_CLIPPED_FRACTION = 0.5  # speech peaks far above its average level: half the samples pinned is broken


class Audio(NamedTuple):
    """A mono float32 waveform and its sample rate. A plain ``(samples, sr)`` tuple works too."""

    samples: np.ndarray
    sr: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sr

    def at(self, sr: int) -> np.ndarray:
        """The samples resampled to ``sr``."""
        return resample(self.samples, self.sr, sr)


def _name(src: Source, name: str | None) -> str:
    return name or ("audio bytes" if isinstance(src, bytes) else str(src))


def _open(src: Source):
    return io.BytesIO(src) if isinstance(src, bytes) else os.fspath(src)


def check(wav: np.ndarray, name: str, *, min_std: float = MIN_STD,
          max_clipped_fraction: float = MAX_CLIPPED_FRACTION) -> np.ndarray:
    """The one audio validity check: raise AudioError (its `reason` says why) unless `wav` has
    samples, all of them finite, not all zero, varying by more than `min_std` (a constant or DC
    signal is not sound) and with at most `max_clipped_fraction` of them at full scale (a NaN
    buffer written as 16-bit PCM comes back as -1.0 everywhere). Vectorised: it runs on every
    sample the loader decodes."""
    if wav.size == 0:
        raise AudioError(f"{name}: zero-length audio", "empty_audio")
    if not np.isfinite(wav).all():
        raise AudioError(f"{name}: audio contains NaN/inf samples", "nan_audio")
    peak = np.abs(wav)
    if not peak.max() > 0:
        raise AudioError(f"{name}: all-zero audio", "silent_audio")
    clipped = float(np.count_nonzero(peak >= FULL_SCALE)) / wav.size
    if clipped > max_clipped_fraction:
        raise AudioError(f"{name}: clipped flat ({clipped:.1%} of the samples at full scale > "
                         f"max_clipped_fraction {max_clipped_fraction:g})", "clipped_audio")
    std = float(wav.std(dtype=np.float64))
    if std <= min_std:
        raise AudioError(f"{name}: constant audio (std {std:.2g} <= min_std {min_std:g}, mean "
                         f"{float(wav.mean(dtype=np.float64)):.3g}): DC, not sound", "constant_audio")
    return wav


def read(src: Source, *, start: int = 0, frames: int = -1, channel: int | None = None, name: str | None = None,
         validate: bool = True) -> tuple[np.ndarray, int]:
    """A file or encoded bytes -> (mono float32 (n,), rate).

    Args:
        src: path, or the encoded bytes of a file.
        start, frames: the window to decode, in samples at the file's own rate (default: all).
        channel: keep this channel; None averages the channels (down-mix).
        name: what error messages call `src` (default: its path).
        validate: raise AudioError on audio that `check` rejects (empty, non-finite, silent,
            constant, clipped flat).
    Raises:
        FileNotFoundError for a missing file, AudioError for anything that cannot be decoded.
    """
    label = _name(src, name)
    if isinstance(src, bytes) and not src:
        raise AudioError(f"{label}: zero-byte audio", "empty_audio")
    if not isinstance(src, bytes) and not Path(src).is_file():
        raise FileNotFoundError(f"audio file {label} does not exist")
    try:
        data, sr = sf.read(_open(src), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as exn:  # soundfile raises several types (LibsndfileError, RuntimeError, ...), unnamed
        raise AudioError(f"{label}: cannot read audio ({type(exn).__name__}: {exn})") from None
    wav = data[:, channel] if channel is not None else data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    return (check(wav, label) if validate else wav), int(sr)


def info(src: Source, name: str | None = None) -> tuple[int, int]:
    """(frames, rate) from the header, without decoding the samples. Raises AudioError."""
    label = _name(src, name)
    try:
        i = sf.info(_open(src))
    except Exception as exn:
        raise AudioError(f"{label}: cannot read audio ({type(exn).__name__}: {exn})") from None
    return i.frames, i.samplerate


def resample(wav: np.ndarray | torch.Tensor, orig: int, new: int) -> np.ndarray | torch.Tensor:
    """(..., n) float at `orig` Hz -> (..., m) float32 at `new` Hz; numpy in, numpy out (tensor: tensor)."""
    if isinstance(wav, torch.Tensor):
        x = wav.float()
        return x if orig == new else AF.resample(x, int(orig), int(new))
    x = np.asarray(wav, dtype=np.float32)
    return x if orig == new else AF.resample(torch.from_numpy(x), int(orig), int(new)).numpy()


def load(path: str | os.PathLike, sample_rate: int | None = None, validate: bool = True) -> Audio:
    """A file as mono `Audio`, resampled to `sample_rate` when given (else at the file's rate)."""
    wav, sr = read(path, validate=validate)
    if sample_rate is not None and sr != sample_rate:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    return Audio(wav, sr)


def load_tensor(path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
    """A file as a mono float32 tensor (n,) at `sample_rate` (the models' input)."""
    return torch.from_numpy(load(path, sample_rate).samples)


def _pcm16(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    return np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)


def save(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int = OUTPUT_SAMPLE_RATE) -> Path:
    """Write a mono waveform (n,) atomically, clipped to [-1, 1]; the suffix picks the format (.wav and
    .flac as 16-bit PCM); folders are created."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"cannot write audio file {path}: unknown format {path.suffix!r} (use .wav or .flac)")
    with atomic_write(path) as tmp:  # the temporary name hides the suffix: say the format
        sf.write(str(tmp), _pcm16(wav), int(sample_rate), format=fmt,
                 subtype="PCM_16" if fmt in ("WAV", "FLAC") else None)
    return path


def encode_flac(wav: np.ndarray, sample_rate: int) -> bytes:
    """float (n,) in [-1, 1] -> 16-bit flac bytes (clipped), for shard members."""
    buf = io.BytesIO()
    sf.write(buf, _pcm16(wav), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
