"""Lazy access to folders and WebDataset shards of audio files (noise, RIRs).

Nothing is decoded when a collection is built: a folder is listed (paths only), a shard is indexed
on first use (member offsets from the tar headers). Audio is read on demand with soundfile, down-mixed
to mono and resampled with torchaudio. Every error names the file (and member) it comes from.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")


class AudioFileError(ValueError):
    """An audio file (or shard member) that cannot be used; the message names it."""


def list_audio(folder: str | os.PathLike, what: str = "audio") -> list[str]:
    """All audio files under `folder` (recursive, sorted). Raises when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist or is not a directory")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not paths:
        raise AudioFileError(f"{what} folder {str(root)!r} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return paths


def _to_mono(data: np.ndarray, name: str, sr: int, sample_rate: int, first_channel: bool = False) -> torch.Tensor:
    """(frames, channels) -> (n,) at `sample_rate`: the channel mean, or channel 0 (for RIRs, whose
    channels have different delays and must not be averaged)."""
    if data.size == 0:
        raise AudioFileError(f"{name}: zero-length audio")
    mono = data[:, 0] if first_channel else data.mean(axis=1)
    wav = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if not torch.isfinite(wav).all():
        raise AudioFileError(f"{name}: audio contains NaN/inf samples")
    if sr != sample_rate:
        wav = AF.resample(wav, sr, sample_rate)
    return wav


@dataclass(frozen=True)
class FileSource:
    """One audio file on disk; reads whole or a window of it."""

    path: str

    def frames(self) -> tuple[int, int]:
        """(frames, rate) from the header."""
        try:
            info = sf.info(self.path)
        except Exception as exn:  # soundfile raises LibsndfileError, RuntimeError, ...
            raise AudioFileError(f"{self.path}: cannot read audio ({type(exn).__name__}: {exn})") from None
        if info.frames <= 0:
            raise AudioFileError(f"{self.path}: zero-length audio")
        return info.frames, info.samplerate

    def read(self, sample_rate: int, start: int = 0, frames: int = -1, first_channel: bool = False) -> torch.Tensor:
        """Mono float32 at `sample_rate`; `start`/`frames` count samples at the file's own rate."""
        try:
            data, sr = sf.read(self.path, start=start, frames=frames, dtype="float32", always_2d=True)
        except Exception as exn:
            raise AudioFileError(f"{self.path}: cannot read audio ({type(exn).__name__}: {exn})") from None
        return _to_mono(data, self.path, sr, sample_rate, first_channel)


@dataclass(frozen=True)
class MemberSource:
    """One audio member of a (local, uncompressed) tar shard, located by its data offset."""

    shard: str
    member: str
    offset: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.shard}:{self.member}"

    def _bytes(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def frames(self) -> tuple[int, int]:
        try:
            info = sf.info(io.BytesIO(self._bytes()))
        except Exception as exn:
            raise AudioFileError(f"{self.name}: cannot read audio ({type(exn).__name__}: {exn})") from None
        if info.frames <= 0:
            raise AudioFileError(f"{self.name}: zero-length audio")
        return info.frames, info.samplerate

    def read(self, sample_rate: int, start: int = 0, frames: int = -1, first_channel: bool = False) -> torch.Tensor:
        if self.size == 0:
            raise AudioFileError(f"{self.name}: zero-length audio")
        try:
            data, sr = sf.read(io.BytesIO(self._bytes()), start=start, frames=frames, dtype="float32", always_2d=True)
        except Exception as exn:
            raise AudioFileError(f"{self.name}: cannot read audio ({type(exn).__name__}: {exn})") from None
        return _to_mono(data, self.name, sr, sample_rate, first_channel)


def index_shard(shard: str) -> list[MemberSource]:
    """The audio members of one tar shard (headers only, no audio decoded)."""
    if "://" in shard or shard.startswith("pipe:"):
        raise AudioFileError(f"{shard}: only local, uncompressed tar shards can be indexed for random access")
    out = []
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if info.isfile() and Path(info.name).suffix.lower() in AUDIO_SUFFIXES:
                    out.append(MemberSource(shard, info.name, info.offset_data, info.size))
    except (tarfile.TarError, OSError) as exn:
        raise AudioFileError(f"{shard}: cannot index shard ({type(exn).__name__}: {exn})") from None
    return out


def read_window(src: FileSource | MemberSource, n: int, sample_rate: int,
                generator: torch.Generator) -> torch.Tensor:
    """About n samples (at `sample_rate`) from a random position of `src`; the whole file when it is
    shorter. Only the window is decoded (plus a small margin for the resampler)."""
    from metis.conditions._random import randint

    total, sr = src.frames()
    need = int(np.ceil(n * sr / sample_rate)) + 64
    if total <= need:
        return src.read(sample_rate)
    start = randint(generator, total - need + 1)
    return src.read(sample_rate, start=start, frames=need)[:n]
