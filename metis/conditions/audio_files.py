"""Lazy access to folders and WebDataset shards of audio files (noise, RIRs).

Nothing is decoded when a collection is built: a folder is listed (paths only), a shard is indexed
on first use (member offsets from the tar headers). Audio is read on demand through `metis.audio`
(mono, resampled, errors naming the file and member).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metis import audio
from metis.audio import AUDIO_SUFFIXES, AudioError


def list_audio(folder: str | os.PathLike, what: str = "audio") -> list[str]:
    """All audio files under `folder` (recursive, sorted). Raises when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist or is not a directory")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not paths:
        raise AudioError(f"{what} folder {str(root)!r} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return paths


def _read(src: str | bytes, name: str, sample_rate: int, start: int, frames: int, first_channel: bool) -> torch.Tensor:
    """Mono float32 at `sample_rate`: the channel mean, or channel 0 (for RIRs, whose channels have
    different delays and must not be averaged)."""
    wav, sr = audio.read(src, start=start, frames=frames, channel=0 if first_channel else None, name=name)
    return audio.resample(torch.from_numpy(wav), sr, sample_rate)


def _frames(src: str | bytes, name: str) -> tuple[int, int]:
    frames, sr = audio.info(src, name)
    if frames <= 0:
        raise AudioError(f"{name}: zero-length audio", "empty_audio")
    return frames, sr


@dataclass(frozen=True)
class FileSource:
    """One audio file on disk; reads whole or a window of it."""

    path: str

    def frames(self) -> tuple[int, int]:
        """(frames, rate) from the header."""
        return _frames(self.path, self.path)

    def read(self, sample_rate: int, start: int = 0, frames: int = -1, first_channel: bool = False) -> torch.Tensor:
        """Mono float32 at `sample_rate`; `start`/`frames` count samples at the file's own rate."""
        return _read(self.path, self.path, sample_rate, start, frames, first_channel)


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
        return _frames(self._bytes(), self.name)

    def read(self, sample_rate: int, start: int = 0, frames: int = -1, first_channel: bool = False) -> torch.Tensor:
        return _read(self._bytes(), self.name, sample_rate, start, frames, first_channel)


def index_shard(shard: str) -> list[MemberSource]:
    """The audio members of one tar shard (headers only, no audio decoded)."""
    if "://" in shard or shard.startswith("pipe:"):
        raise AudioError(f"{shard}: only local, uncompressed tar shards can be indexed for random access")
    out = []
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                if info.isfile() and Path(info.name).suffix.lower() in AUDIO_SUFFIXES:
                    out.append(MemberSource(shard, info.name, info.offset_data, info.size))
    except (tarfile.TarError, OSError) as exn:
        raise AudioError(f"{shard}: cannot index shard ({type(exn).__name__}: {exn})") from None
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
