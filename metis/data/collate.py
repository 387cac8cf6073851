"""Padding a list of decoded samples into the batch dict the Lightning modules consume.

Batch (b samples; t frames at 50 Hz; n audio samples):
    sem          (b, t_sem) int64, padded with 0      sem_mask (b, t_sem) float32, 1 = valid; sem_lens (b,)
    ac           (b, t_ac, 12) int64, padded with 0   ac_mask (b, t_ac) float32;  ac_lens (b,)
    vis          (b, t_vis, d) float32                vis_mask (b, t_vis) float32; vis_lens (b,)
    wav16        (b, n16) float32 at 16 kHz           wav16_lens (b,) int64
    wav24        (b, n24) float32 at 24 kHz           wav24_lens (b,) int64
    duration     (b,) float32 seconds (from the json)  dnsmos (b,) float32, NaN when absent
    text, speaker, language, id, key, url: list[str] of length b
    n_frames     int, real frames (the batching length summed over the batch)
    padding_ratio float, 1 - n_frames / (b · max_len)
    skipped      dict[str, int], samples dropped by this worker since its previous batch
    stream_batch int (train streams only), the stream's batch count after this batch: the
                 LightningDataModule takes it off to know where the trainer is (metis/data/resume.py)
Only the fields that were requested are present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from metis.data.batching import padding_ratio


@dataclass
class Item:
    key: str
    url: str
    meta: dict
    length: int  # frames at 50 Hz used for batching
    audio: bytes | None = None
    sem: np.ndarray | None = None  # (t,)
    ac: np.ndarray | None = None  # (t, 12)
    vis: np.ndarray | None = None  # (t, d)
    wavs: dict[str, torch.Tensor] = field(default_factory=dict)  # "wav16"/"wav24" -> (n,)
    offset: int = -1  # byte offset of its first tar member in `url`: its reference for an exact resume


def pad_stack(seqs: list[torch.Tensor], value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors (t_i, ...) -> (b, max t, ...) padded with `value`, and lengths (b,) int64."""
    lens = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    out = seqs[0].new_full((len(seqs), int(lens.max()), *seqs[0].shape[1:]), value)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out, lens


def lengths_mask(lens: torch.Tensor, t: int) -> torch.Tensor:
    return (torch.arange(t)[None, :] < lens[:, None]).float()


def collate(items: list[Item], fields: tuple[str, ...]) -> dict:
    """Pad `items` into the batch dict described in the module docstring."""
    if not items:
        raise ValueError("collate: empty batch")
    batch: dict = {}
    for name, dtype in (("sem", torch.long), ("ac", torch.long), ("vis", torch.float32)):
        if name in fields:
            x, lens = pad_stack([torch.as_tensor(getattr(it, name).astype(np.int64 if dtype == torch.long else np.float32))
                                 for it in items])
            batch[name], batch[f"{name}_lens"] = x, lens
            batch[f"{name}_mask"] = lengths_mask(lens, x.shape[1])
    for name in ("wav16", "wav24"):
        if name in fields:
            batch[name], batch[f"{name}_lens"] = pad_stack([it.wavs[name] for it in items])
    meta = [it.meta for it in items]
    for name in ("text", "speaker", "language", "id"):
        batch[name] = [str(m.get(name, "")) for m in meta]
    batch["key"] = [it.key for it in items]
    batch["url"] = [it.url for it in items]
    batch["duration"] = torch.tensor([float(m.get("duration", math.nan)) for m in meta], dtype=torch.float32)
    batch["dnsmos"] = torch.tensor([_float_or_nan(m.get("dnsmos")) for m in meta], dtype=torch.float32)
    lengths = [it.length for it in items]
    batch["n_frames"] = sum(lengths)
    batch["padding_ratio"] = padding_ratio(lengths)
    return batch


def _float_or_nan(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
