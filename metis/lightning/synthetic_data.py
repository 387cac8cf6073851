"""A structured synthetic token corpus: a smoke test and benchmark input that needs no audio.

Each sequence is an arithmetic progression modulo the vocabulary, (start + step * i) mod v, with a
random start and a step drawn from a small set, and a random length. A bidirectional masked model
can infer a masked token from its neighbours, so the loss of a working model falls quickly.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from metis.lightning.fault_tolerance import EqualBatches, ResumableSampler


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

    Under DDP/DeepSpeed each rank reads a disjoint share (`ResumableSampler`; keep the trainer's
    `use_distributed_sampler: false`). The training order is a function of (seed, epoch) only and
    the position within the epoch is checkpointed, so a resumed run continues with exactly the
    batches an uninterrupted run would have drawn. Validation batches are equalised across ranks.

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

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        rank, world = self._rank_world()
        sampler = ResumableSampler(len(self.train_set), seed=h.seed, rank=rank, world_size=world, shuffle=True)
        if self._resume is not None:
            epoch, batches = self._resume
            sampler.resume_at(epoch, batches * h.batch_size)
            self._resume = None
        # Own generator: creating the iterator must not draw from the global RNG (restored on resume).
        return DataLoader(self.train_set, batch_size=h.batch_size, sampler=sampler, collate_fn=collate_tokens,
                          num_workers=h.num_workers, drop_last=True, generator=torch.Generator().manual_seed(h.seed))

    def val_dataloader(self):
        h = self.hparams
        rank, world = self._rank_world()
        sampler = ResumableSampler(len(self.val_set), seed=h.seed, rank=rank, world_size=world, shuffle=False)
        return EqualBatches(DataLoader(self.val_set, batch_size=h.batch_size, sampler=sampler, collate_fn=collate_tokens,
                                       num_workers=h.num_workers))

    # ---- resumable position: (epoch, batches of it this rank has trained on) -------------------------
    _resume: tuple[int, int] | None = None

    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch,
                "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume = (int(state["epoch"]), int(state["batches_done"]))
