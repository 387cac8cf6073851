"""Per-dimension mean/variance of SSL features over shards: `python -m metis.data stats`.

Streaming: per-batch (count, mean, M2) are merged with Chan et al.'s parallel update in float64,
so memory does not grow with the corpus. The output is a safetensors file in the
`wav2vec2bert_stats` format: `mean`, `var`, `std`, float32 (D,), var unbiased (as torch.var),
std = sqrt(var). Only samples that pass the loader's own check (`metis.data.validate.SampleRules`)
are used; the others are counted under their reason, with shard and key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch

from metis import audio
from metis.data.shards import expand_shards, iter_tar
from metis.data.skips import SHARD_ERROR, SkipCounter
from metis.data.validate import SampleRules, checked_samples


class RunningStats:
    """Chan/Welford running mean and M2 over rows of (n, D) tensors."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.mean = None if dim is None else torch.zeros(dim, dtype=torch.float64)
        self.m2 = None if dim is None else torch.zeros(dim, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"feature dim changed: {x.shape[1]} vs {self.mean.shape[0]}")
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta ** 2 * (self.n * nb / n)
        self.n = n

    def merge(self, other: "RunningStats") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta ** 2 * (self.n * other.n / n)
        self.n = n

    @property
    def var(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError(f"variance needs at least 2 frames, have {self.n}")
        return self.m2 / (self.n - 1)

    def result(self) -> dict[str, torch.Tensor]:
        var = self.var
        return {"mean": self.mean.float(), "var": var.float(), "std": var.sqrt().float()}

    def save(self, path: str | os.PathLike) -> Path:
        from metis.checkpoints.io import save_safetensors

        return save_safetensors(self.result(), path, metadata={"frames": str(self.n)})


def feature_fn(extractor):
    """Un-normalised features: `raw_features(wavs)` when the extractor has it, else `features(wavs)`."""
    return getattr(extractor, "raw_features", None) or extractor.features


def compute_stats(shards: str | Sequence[str], extractor, out_path: str | os.PathLike, *,
                  max_hours: float | None = None, batch_seconds: float = 200.0, rules: SampleRules = SampleRules(),
                  progress: bool = True) -> dict:
    """Stream the samples of `shards` that pass `rules` through `extractor` and write mean/var/std of
    its features to `out_path`; the summary's `skipped` counts the others by reason."""
    from tqdm import tqdm

    urls = expand_shards(shards)
    feats = feature_fn(extractor)
    rs = RunningStats()
    skips = SkipCounter()
    seconds, t0 = 0.0, time.time()
    batch: list[torch.Tensor] = []
    batch_s = 0.0

    def flush():
        nonlocal batch, batch_s
        for f in feats(batch):
            rs.update(torch.as_tensor(f))
        batch, batch_s = [], 0.0

    bar = tqdm(total=len(urls), desc="stats", unit="shard", disable=not progress)
    for url in urls:
        def handler(exn, url=url):
            skips.skip(SHARD_ERROR, url, f"{type(exn).__name__}: {exn} (the rest of the shard is lost)")
            return True

        for _, _, wav, sr in checked_samples(iter_tar(url, handler=handler), rules, skips):
            batch.append(audio.resample(torch.from_numpy(wav), sr, extractor.sample_rate))
            batch_s += len(wav) / sr
            seconds += len(wav) / sr
            if batch_s >= batch_seconds:
                flush()
            if max_hours is not None and seconds >= max_hours * 3600:
                break
        bar.update(1)
        if max_hours is not None and seconds >= max_hours * 3600:
            break
    bar.close()
    if batch:
        flush()
    rs.save(out_path)
    return {"out": str(out_path), "frames": rs.n, "dim": int(rs.mean.shape[0]) if rs.n else 0,
            "hours": round(seconds / 3600, 4), "elapsed_s": round(time.time() - t0, 2), "skipped": skips.as_dict()}
