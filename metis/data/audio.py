"""Audio decoding (soundfile), down-mixing and resampling (torchaudio), and encoding to flac."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from metis.data.shards import TOKENIZER_MEMBER, audio_ext


class AudioError(ValueError):
    """Audio that cannot be used; `reason` is a SkipCounter reason."""

    def __init__(self, reason: str, msg: str):
        super().__init__(msg)
        self.reason = reason


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded bytes (flac, wav, mp3, ogg) -> (mono float32 (n,), rate). Raises AudioError."""
    if not data:
        raise AudioError("empty_audio", "zero-byte audio member")
    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exn:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioError("undecodable_audio", f"{type(exn).__name__}: {exn}") from None
    return check(wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0], sr), sr


def check(wav: np.ndarray, sr: int) -> np.ndarray:
    if wav.size == 0:
        raise AudioError("empty_audio", "zero-length audio")
    if not np.isfinite(wav).all():
        raise AudioError("nan_audio", "audio contains NaN/inf samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


def read_file(path: str) -> tuple[np.ndarray, int]:
    with open(path, "rb") as f:
        return decode(f.read())


def info_frames(data: bytes) -> tuple[int, int]:
    """(frames, rate) from the header, without decoding the samples. Raises AudioError."""
    try:
        i = sf.info(io.BytesIO(data))
    except Exception as exn:
        raise AudioError("undecodable_audio", f"{type(exn).__name__}: {exn}") from None
    return i.frames, i.samplerate


@lru_cache(maxsize=16)
def _kernel_key(orig: int, new: int) -> tuple[int, int]:
    g = np.gcd(orig, new)
    return orig // g, new // g


def resample(wav: torch.Tensor | np.ndarray, orig: int, new: int) -> torch.Tensor:
    """(n,) float -> (m,) float32 at `new` Hz (band-limited sinc, torchaudio)."""
    x = torch.as_tensor(wav, dtype=torch.float32)
    if orig == new:
        return x
    a, b = _kernel_key(orig, new)
    return AF.resample(x, a, b)


def encode_flac(wav: np.ndarray, sr: int) -> bytes:
    """float (n,) in [-1, 1] -> 16-bit flac bytes (clipped)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decoded_samples(samples, skipped, require_json: bool = False):
    """(sample, wav, sr) for each decodable audio sample of a shard's samples (the tokenizer member
    skipped); a sample without audio (or json, when required) or with undecodable audio is counted
    in `skipped` under its reason and passed over."""
    for sample in samples:
        if sample["__key__"] == TOKENIZER_MEMBER:
            continue
        ext = audio_ext(sample)
        if ext is None or (require_json and "json" not in sample):
            skipped["missing_field"] += 1
            continue
        try:
            wav, sr = decode(sample[ext])
        except AudioError as exn:
            skipped[exn.reason] += 1
            continue
        yield sample, wav, sr
