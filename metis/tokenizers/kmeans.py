"""A real unsupervised demo tokenizer: k-means over 50 Hz log-mel frames (HuBERT iteration 1).

Features: 80-bin Kaldi fbank (25 ms window, 10 ms shift, `snip_edges=False`, no dither) on the
16 kHz waveform, consecutive frames stacked in pairs -> 160-d at 50 Hz (the same stacking the
w2v-BERT front end uses), global CMVN (mean/std fitted on the corpus), then the nearest of
`n_clusters` centroids. A waveform of n·320 samples (n·0.02 s) gives exactly n codes.

It implements `metis.tokenizers.base.SpeechTokenizer`; `identity()` includes a hash of the
centroids and CMVN, so token shards made with one fit are never read with another. Saved as
`{dir}/kmeans.safetensors` (centroids, mean, std) + `{dir}/kmeans.json` (config).

Axes: n samples, f fbank frames (100 Hz), t frames (50 Hz), d feature dim (160), k clusters.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
import torchaudio.compliance.kaldi as kaldi

from metis.tokenizers.base import tensors_sha256


@dataclass
class KMeansConfig:
    n_clusters: int = 512
    n_mels: int = 80
    stack: int = 2  # 10 ms fbank frames per code: 2 -> 50 Hz
    sample_rate: int = 16000
    seed: int = 0
    max_iter: int = 25
    tol: float = 1e-3  # stop when fewer than this fraction of frames change cluster
    max_fit_frames: int = 50_000  # frames subsampled (seeded) for Lloyd; bounds time and memory
    init_frames: int = 20_000  # k-means++ seeding runs on this many of them (it is sequential in k)


def fbank_frames(wav: torch.Tensor, cfg: KMeansConfig) -> torch.Tensor:
    """(n,) float waveform -> (t, n_mels * stack) log-mel, t = ceil(round(n / 160) / stack)."""
    n = wav.numel()
    n_f = (n + 80) // 160  # Kaldi's frame count with snip_edges=False
    if n_f == 0:
        return torch.zeros(0, cfg.n_mels * cfg.stack)
    x = wav.to(torch.float32).reshape(1, -1) * 32768.0  # Kaldi's int16 scale: keeps the log floor sane
    if n < 400:  # fbank needs one full window; the padded tail only adds frames we drop
        x = torch.nn.functional.pad(x, (0, 400 - n))
    f = kaldi.fbank(x, num_mel_bins=cfg.n_mels, frame_length=25.0, frame_shift=10.0, dither=0.0,
                    snip_edges=False, sample_frequency=cfg.sample_rate, energy_floor=0.0)[:n_f]  # (f, n_mels)
    pad = (-f.shape[0]) % cfg.stack
    if pad:
        f = torch.cat([f, f[-1:].expand(pad, -1)])
    return f.reshape(-1, cfg.n_mels * cfg.stack)


def _sq_dists(x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """(t, d), (k, d), (k,) -> (t, k) squared euclidean distances."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c_sq).clamp_min_(0)


def assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and its squared distance for each row of x, in chunks."""
    c_sq = c.pow(2).sum(1)
    idx, dist = [], []
    for s in range(0, x.shape[0], chunk):
        d, i = _sq_dists(x[s:s + chunk], c, c_sq).min(1)
        idx.append(i)
        dist.append(d)
    if not idx:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(idx), torch.cat(dist)


def kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centroid drawn with probability ∝ squared distance to the nearest.
    Distances use ||x||² - 2x·c + ||c||² (a mat-vec per step, no (n, d) temporaries)."""
    n = x.shape[0]
    x_sq = x.pow(2).sum(1)
    centers = torch.empty(k, x.shape[1])
    centers[0] = x[torch.randint(n, (1,), generator=gen)]
    best = (x_sq - 2 * (x @ centers[0]) + centers[0].pow(2).sum()).clamp_min_(0)
    for j in range(1, k):
        cum = torch.cumsum(best.double(), 0)  # inverse-CDF draw (torch.multinomial is ~5x slower here)
        if cum[-1] <= 0:  # fewer distinct points than clusters: duplicate
            i = int(torch.randint(n, (1,), generator=gen))
        else:
            u = torch.rand(1, generator=gen, dtype=torch.float64) * cum[-1]
            i = min(int(torch.searchsorted(cum, u)), n - 1)
        centers[j] = x[i]
        torch.minimum(best, (x_sq - 2 * (x @ centers[j]) + centers[j].pow(2).sum()).clamp_min_(0), out=best)
    return centers


def lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float) -> tuple[torch.Tensor, int]:
    """Lloyd iterations; empty clusters are re-seeded at the points farthest from their centroid."""
    k, prev = centers.shape[0], None
    it = 0
    for it in range(1, max_iter + 1):
        idx, dist = assign(x, centers)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, idx, x)
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = dist.topk(len(empty)).indices
            new[empty] = x[far]
        centers = new
        if prev is not None and (idx != prev).float().mean().item() < tol and not len(empty):
            break
        prev = idx
    return centers, it


class KMeansTokenizer:
    """k-means codes over CMVN-normalised stacked fbank frames (see module docstring)."""

    name = "kmeans-fbank"
    frame_rate = 50.0

    def __init__(self, centroids: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, config: KMeansConfig):
        if centroids.shape != (config.n_clusters, config.n_mels * config.stack):
            raise ValueError(f"centroids {tuple(centroids.shape)} do not match config "
                             f"({config.n_clusters}, {config.n_mels * config.stack})")
        self.centroids, self.mean, self.std, self.config = centroids.float(), mean.float(), std.float(), config
        self.sample_rate = config.sample_rate
        self.codebook_size = config.n_clusters
        self.frame_rate = config.sample_rate / 160 / config.stack

    # ---------------------------------------------------------------- features and codes
    def raw_features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Waveforms (n_i,) at `sample_rate` -> un-normalised (t_i, d) features."""
        return [fbank_frames(torch.as_tensor(w), self.config) for w in wavs]

    def features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Waveforms -> CMVN-normalised (t_i, d) features."""
        return [(f - self.mean) / self.std for f in self.raw_features(wavs)]

    @torch.inference_mode()
    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Waveforms (n_i,) at `sample_rate` -> codes (t_i,) int64, t_i = `n_frames(n_i)`."""
        feats = self.features(wavs)
        lens = [f.shape[0] for f in feats]
        if not sum(lens):
            return [torch.zeros(0, dtype=torch.long) for _ in wavs]
        idx, _ = assign(torch.cat(feats), self.centroids)
        return list(idx.split(lens))

    def identity(self) -> dict[str, str]:
        c = self.config
        return {
            "name": self.name,
            "model": f"kaldi-fbank{c.n_mels}x{c.stack}+cmvn",
            "sample_rate": str(c.sample_rate),
            "frame_rate": f"{self.frame_rate:g}",
            "n_clusters": str(c.n_clusters),
            "codec_sha256": tensors_sha256({"centroids": self.centroids, "mean": self.mean, "std": self.std}),
        }

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, wavs: Iterable[torch.Tensor], config: KMeansConfig | None = None,
            log=print) -> "KMeansTokenizer":
        """Fit CMVN and k-means (k-means++ + Lloyd) on 16 kHz waveforms; deterministic under `config.seed`."""
        cfg = config or KMeansConfig()
        gen = torch.Generator().manual_seed(cfg.seed)
        feats = [fbank_frames(torch.as_tensor(w), cfg) for w in wavs]
        x = torch.cat([f for f in feats if len(f)])
        if x.shape[0] < cfg.n_clusters:
            raise ValueError(f"k-means needs at least n_clusters={cfg.n_clusters} frames, got {x.shape[0]}")
        mean, std = x.mean(0), x.std(0).clamp_min(1e-5)
        x = x[torch.randperm(x.shape[0], generator=gen)[: cfg.max_fit_frames]]
        x = (x - mean) / std
        init = kmeans_pp(x[: max(cfg.init_frames, cfg.n_clusters)], cfg.n_clusters, gen)  # x is already shuffled
        centers, iters = lloyd(x, init, cfg.max_iter, cfg.tol)
        _, dist = assign(x, centers)
        log(f"k-means: {cfg.n_clusters} clusters on {x.shape[0]} frames, {iters} Lloyd iterations, "
            f"mean sq. distance {dist.mean().item():.2f}")
        return cls(centers, mean, std, cfg)

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        from metis.atomic import write_json
        from metis.checkpoints.io import save_safetensors

        d = Path(directory)
        save_safetensors({"centroids": self.centroids, "mean": self.mean, "std": self.std}, d / "kmeans.safetensors")
        write_json(d / "kmeans.json", {"config": asdict(self.config), "identity": self.identity()})
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "KMeansTokenizer":
        from metis.checkpoints.io import read_safetensors

        d = Path(directory)
        if not (d / "kmeans.json").exists() or not (d / "kmeans.safetensors").exists():
            raise FileNotFoundError(f"no fitted k-means tokenizer in {d} (expected kmeans.json + kmeans.safetensors)")
        meta = json.loads((d / "kmeans.json").read_text())
        t = read_safetensors(d / "kmeans.safetensors")
        return cls(t["centroids"], t["mean"], t["std"], KMeansConfig(**meta["config"]))

    @staticmethod
    def n_frames(n_samples: int, stack: int = 2, hop: int = 160) -> int:
        """Codes produced for a waveform of n_samples (n·320 samples -> n codes)."""
        return math.ceil(((n_samples + hop // 2) // hop) / stack)
