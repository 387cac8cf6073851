"""The interface every speech tokenizer offers to the data layer and the training modules.

A tokenizer turns a mono waveform at its own `sample_rate` into integer codes at `frame_rate`.
`identity()` names exactly what produced the codes (model id, layer, hashes of the stats and codec
weights), so that shards made by one tokenizer are never silently read with another.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SpeechTokenizer(Protocol):
    name: str  # short kind, e.g. "w2v-bert-2.0+repcodec" or "kmeans-fbank"
    sample_rate: int  # rate of the waveform `encode` expects
    frame_rate: float  # codes per second (50 for every tokenizer of this project)
    codebook_size: int

    def identity(self) -> dict[str, str]:
        """Everything that determines the codes; written into token shards and compared on read."""
        ...

    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono float waveforms (n_i,) at `sample_rate` -> codes (t_i,) int64, one per input."""
        ...


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (used for stats and codec weights in tokenizer identities)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hex sha256 over a state dict's names, shapes, dtypes and bytes, in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
