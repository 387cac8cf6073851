"""Synthetic speech for fine-tuning tests: harmonic "vowels" whose pitch depends on the speaker, a
k-means tokenizer fitted on them (the demo tokenizer's recipe, 16 clusters), and a datamodule that
serves collate-style batches (wav16, sem, text, speaker, ...; vis on request)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from metis.conditions.builders import ConditionStage
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer

SR = 16000
HOP = 320
SPEAKERS = {"spk_a": 110.0, "spk_b": 160.0, "spk_c": 220.0}
WORDS = "the small river crossed a quiet garden near old station".split()


def utterance(f0: float, seconds: float, g: torch.Generator) -> torch.Tensor:
    """A sequence of 0.1 s harmonic segments at pitch f0 with random spectral envelopes."""
    n_seg = max(1, int(seconds / 0.1))
    t = torch.arange(int(0.1 * SR)) / SR
    segs = []
    for _ in range(n_seg):
        amps = torch.rand(8, generator=g) ** 2
        seg = sum(a * torch.sin(2 * math.pi * f0 * (k + 1) * t) for k, a in enumerate(amps))
        segs.append(seg)
    wav = torch.cat(segs)
    wav = wav / wav.abs().max() * 0.5
    return wav + 0.003 * torch.randn(wav.shape, generator=g)


def fit_tokenizer(directory: Path, n_clusters: int = 16) -> KMeansTokenizer:
    g = torch.Generator().manual_seed(0)
    wavs = [utterance(f0, 1.0, g) for f0 in SPEAKERS.values() for _ in range(3)]
    tok = KMeansTokenizer.fit(wavs, KMeansConfig(n_clusters=n_clusters, max_iter=10, init_frames=2000, max_fit_frames=5000),
                              log=lambda *_: None)
    tok.save(directory)
    return tok


def make_batch(tok: KMeansTokenizer, size: int, seed: int, speakers=tuple(SPEAKERS), seconds=(0.8, 1.4),
               vis_dim: int = 0) -> dict:
    """A batch shaped like metis.data.collate's (b utterances cut to whole 20 ms frames)."""
    g = torch.Generator().manual_seed(seed)
    wavs, keys, spk, texts = [], [], [], []
    for i in range(size):
        s = speakers[i % len(speakers)]
        dur = seconds[0] + (seconds[1] - seconds[0]) * float(torch.rand((), generator=g))
        w = utterance(SPEAKERS[s], dur, g)
        wavs.append(w[: len(w) // HOP * HOP])
        keys.append(f"{s}-{seed}-{i}")
        spk.append(s)
        n_words = 2 + int(torch.randint(4, (), generator=g))
        texts.append(" ".join(WORDS[int(j)] for j in torch.randint(len(WORDS), (n_words,), generator=g)))
    codes = tok.encode(wavs)
    lens = torch.tensor([len(w) for w in wavs])
    wav16 = torch.zeros(size, int(lens.max()))
    sem_lens = torch.tensor([len(c) for c in codes])
    sem = torch.zeros(size, int(sem_lens.max()), dtype=torch.long)
    for i, (w, c) in enumerate(zip(wavs, codes)):
        wav16[i, : len(w)] = w
        sem[i, : len(c)] = c
    batch = {"wav16": wav16, "wav16_lens": lens, "sem": sem, "sem_lens": sem_lens,
             "sem_mask": (torch.arange(sem.shape[1])[None] < sem_lens[:, None]).float(),
             "speaker": spk, "key": keys, "text": texts, "language": ["en"] * size}
    if vis_dim:
        v_lens = (sem_lens + 1) // 2  # 25 fps video over the same span (one frame more or less than t/2)
        vis = torch.randn(size, int(v_lens.max()), vis_dim, generator=g)
        batch.update(vis=vis, vis_lens=v_lens, vis_mask=(torch.arange(vis.shape[1])[None] < v_lens[:, None]).float())
    return batch


class SyntheticSpeechDataModule(L.LightningDataModule):
    """Fixed synthetic batches: `n_train` cycled for training, `n_val` for validation.

    Accepts the keys of configs/data/synthetic.yaml (codebook_size = the tokenizer's clusters) plus
    `tokenizer_dir` (fitted there when missing), `fields` (vis is added when asked for) and, as
    ShardDataModule, `conditions` + `cond_seed` (the condition simulation as a loader stage)."""

    def __init__(self, tokenizer_dir: str, codebook_size: int = 16, n_train: int = 4, n_val: int = 2, batch_size: int = 4,
                 fields=("sem", "wav16"), seed: int = 0, conditions=None, cond_seed: int = 0, **_ignored):
        super().__init__()
        self.condition_stage = None if conditions is None else ConditionStage(conditions, cond_seed)
        self.tokenizer_dir, self.codebook_size = Path(tokenizer_dir), codebook_size
        self.n_train, self.n_val, self.batch_size, self.fields, self.seed = n_train, n_val, batch_size, tuple(fields), seed

    def setup(self, stage=None):
        if not (self.tokenizer_dir / "kmeans.json").exists():
            fit_tokenizer(self.tokenizer_dir, self.codebook_size)
        tok = KMeansTokenizer.load(self.tokenizer_dir)
        vis = 768 if "vis" in self.fields else 0
        self.train = [make_batch(tok, self.batch_size, self.seed + i, vis_dim=vis) for i in range(self.n_train)]
        self.val = [make_batch(tok, self.batch_size, 10_000 + i, vis_dim=vis) for i in range(self.n_val)]

    def train_dataloader(self):
        if self.condition_stage is not None and self.trainer is not None:  # as ShardDataModule: survives resume
            self.condition_stage.start = int(self.trainer.fit_loop.epoch_loop.batch_progress.total.processed)
        return _Cycle(self.train, self.condition_stage, f"{self.seed}")

    def val_dataloader(self):
        return _Fixed(self.val, self.condition_stage, f"{self.seed}")


class _Cycle:
    def __init__(self, batches, stage=None, key=""):
        self.batches, self.stage, self.key = batches, stage, key

    def __iter__(self):
        def endless():
            while True:
                yield from self.batches

        return endless() if self.stage is None else self.stage(endless(), "train", self.key)


class _Fixed:
    """One pass over fixed batches (a plain list would read as several dataloaders)."""

    def __init__(self, batches, stage=None, key=""):
        self.batches, self.stage, self.key = batches, stage, key

    def __iter__(self):
        return iter(self.batches) if self.stage is None else self.stage(iter(self.batches), "val", self.key)

    def __len__(self):
        return len(self.batches)
