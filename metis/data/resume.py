"""Exact resume of the endless train stream: where every (rank, worker) slot is, saved and restored.

A slot of the train stream (metis/data/loader.py) walks its own seeded shard orders, one pass after
another, reads samples, holds some in a shuffle buffer, pools them into token-budget batches and
emits those. Its whole state after a batch is a `SlotPosition`: the pass and the shard in that pass's
order, the byte offset of the next sample in that shard, the RNG state, and the samples held in the
buffer, the pool and the batches cut but not yet emitted, each as a reference (shard url, byte
offset of its first tar member) - so a saved position is small and a resumed slot re-reads just
those samples (local shards are seeked, nothing else is read again).

The workers run ahead of the trainer (DataLoader prefetch, Lightning's one-batch prefetch), so each
batch carries its slot's position and the main process keeps the recent ones (`PositionRecorder`):
the position saved in a checkpoint is the one after the last batch the trainer actually consumed.

Batches come round-robin from the DataLoader workers: batch i of a stream comes from worker slot
i mod num_workers. A resumed DataLoader starts again at its worker 0, so the workers are renamed
(`worker_shift`): worker w plays slot (w + consumed) mod num_workers, and the batch order is the
uninterrupted run's.

What is exact: same shards, world size and num_workers -> the resumed run sees the same batches
in the same order as the uninterrupted one. Another world size, worker count or shard list ->
the saved positions do not map onto the new slots: the stream restarts re-seeded (see
ShardDataModule), the samples held in buffers at the checkpoint are not seen, and samples already
seen in the current pass may come again; the log says so.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import asdict, dataclass, field

POSITION_VERSION = 1

Ref = list  # [shard url, byte offset of the sample's first member]


@dataclass
class SlotPosition:
    """One slot of the train stream after its latest emitted batch (see the module docstring)."""

    slot: int
    n_pass: int = 0                # passes over the shard list started so far (0: the first)
    shard: int = 0                 # index, in this pass's shard order, of the shard being read
    offset: int = 0                # byte offset in that shard of the next sample to read
    rng: tuple | None = None       # random.Random state: shuffle-buffer draws and batch order
    buffer: list[Ref] = field(default_factory=list)         # the shuffle buffer, in order
    pool: list[Ref] = field(default_factory=list)           # the batching pool, in order
    pending: list[list[Ref]] = field(default_factory=list)  # batches cut, not yet emitted
    batches: int = 0               # batches this slot has emitted

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SlotPosition":
        pos = cls(**d)
        if pos.rng is not None:  # random.Random.setstate wants the exact tuple shape
            version, internal, gauss = pos.rng
            pos.rng = (version, tuple(internal), gauss)
        return pos

    def random(self, seed: str) -> random.Random:
        rng = random.Random(seed)
        if self.rng is not None:
            rng.setstate(self.rng)
        return rng


def shard_order(seed: int, slot: int, n_pass: int, n_shards: int) -> list[int]:
    """The shard order of pass `n_pass` of `slot`: a permutation that depends on nothing else."""
    return random.Random(f"{seed}/{slot}/pass{n_pass}").sample(range(n_shards), n_shards)


def shards_digest(urls: list[str]) -> str:
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]


class PositionRecorder:
    """Main process: every slot's position after each batch handed out, so that `at(n)` gives the
    positions after the trainer's n-th consumed batch although the workers ran ahead.

    Args:
        start: slot -> position dict at the start (a restored checkpoint), else empty (fresh slots).
        batches: batches already consumed at the start.
        keep: how many recent batches to remember (more than the workers can run ahead).
    """

    def __init__(self, start: dict[int, dict] | None = None, batches: int = 0, keep: int = 64):
        self.base = dict(start or {})
        self.base_batches = batches
        self.recent: deque[tuple[int, dict]] = deque()
        self.keep = keep

    def record(self, slot: int, position: dict) -> int:
        """Note the position after one more batch; returns the batch count after it."""
        self.recent.append((slot, position))
        while len(self.recent) > self.keep:
            old_slot, old = self.recent.popleft()
            self.base[old_slot] = old
            self.base_batches += 1
        return self.yielded

    @property
    def yielded(self) -> int:
        return self.base_batches + len(self.recent)

    def at(self, consumed: int | None = None) -> tuple[dict[int, dict], int]:
        """(slot -> position, batch count) after `consumed` batches (None: all handed out)."""
        consumed = self.yielded if consumed is None else consumed
        n = consumed - self.base_batches
        if not 0 <= n <= len(self.recent):
            raise RuntimeError(f"stream position after batch {consumed} is not known: recorded batches "
                               f"{self.base_batches}..{self.yielded} (the trainer ran further behind the "
                               f"workers than {self.keep} batches)")
        out = dict(self.base)
        for slot, position in list(self.recent)[:n]:
            out[slot] = position
        return out, consumed
