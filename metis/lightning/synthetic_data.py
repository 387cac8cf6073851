"""A structured synthetic token corpus: a smoke test and benchmark input that needs no audio.

Each sequence is an arithmetic progression modulo the vocabulary, (start + step * i) mod v, with a
random start and a step drawn from a small set, and a random length. A bidirectional masked model
can infer a masked token from its neighbours, so the loss of a working model falls quickly.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class ProgressionTokens(Dataset):
    def __init__(self, n_sequences: int, vocab_size: int, min_len: int, max_len: int, n_quantizers: int = 0,
                 steps: tuple[int, ...] = (1, 2, 3, 5), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.n_quantizers = vocab_size, n_quantizers
        self.lengths = torch.randint(min_len, max_len + 1, (n_sequences,), generator=g)
        self.starts = torch.randint(0, vocab_size, (n_sequences,), generator=g)
        self.steps = torch.tensor(steps)[torch.randint(0, len(steps), (n_sequences,), generator=g)]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        pos = torch.arange(int(self.lengths[i]))
        sem = (self.starts[i] + self.steps[i] * pos) % self.vocab_size
        item = {"sem": sem}
        if self.n_quantizers:
            # Acoustic layer q is a fixed function of the semantic token: learnable from the condition.
            q = torch.arange(self.n_quantizers)
            item["ac"] = (sem[:, None] * (q + 1) + q) % 1024
        return item


def collate_tokens(items: list[dict]) -> dict:
    """Pad to the longest item: `sem`/`sem_mask` (and `ac`/`ac_mask`), plus the padding ratio."""
    lens = torch.tensor([len(it["sem"]) for it in items])
    t = int(lens.max())
    mask = (torch.arange(t)[None] < lens[:, None]).float()
    batch = {"sem": torch.nn.utils.rnn.pad_sequence([it["sem"] for it in items], batch_first=True),
             "sem_mask": mask, "padding_ratio": 1 - float(mask.mean())}
    if "ac" in items[0]:
        batch["ac"] = torch.nn.utils.rnn.pad_sequence([it["ac"] for it in items], batch_first=True)
        batch["ac_mask"] = mask.clone()
    return batch


class SyntheticTokenDataModule(L.LightningDataModule):
    """Train/val loaders over `ProgressionTokens` (different seeds for the two splits).

    Args:
        batch_size: sequences per device and step.
        n_quantizers: also emit acoustic tokens (b, t, n_quantizers) for S2A; 0 for stage 1.
    """

    def __init__(self, codebook_size: int = 32, n_train: int = 512, n_val: int = 64, min_len: int = 16, max_len: int = 48,
                 batch_size: int = 8, n_quantizers: int = 0, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(logger=False)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        self.train_set = ProgressionTokens(h.n_train, h.codebook_size, h.min_len, h.max_len, h.n_quantizers, seed=h.seed)
        self.val_set = ProgressionTokens(h.n_val, h.codebook_size, h.min_len, h.max_len, h.n_quantizers, seed=h.seed + 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, collate_fn=collate_tokens,
                          num_workers=self.hparams.num_workers, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_tokens,
                          num_workers=self.hparams.num_workers)
