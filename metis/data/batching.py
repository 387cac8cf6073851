"""Token-budget dynamic batching with length bucketing, as a streaming stage.

A batch holds at most `max_tokens` frames *including padding*: len(batch) · max_len ≤ max_tokens
(Metis: 10K tokens per GPU ≈ 200 s of audio at 50 Hz). For a model that packs its batches (no compute
on padding, `packing=True`), `packed=True` counts real frames instead: sum(lengths) ≤ max_tokens. Items are pooled until the pool holds about
`pool_batches` batches' worth of frames; the pool is sorted by length and cut greedily into batches
(neighbours in length share a batch, so padding stays low), the batches are emitted (shuffled in
training), and the last, unfilled batch goes back into the pool to meet the next arrivals.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def cut_sorted(items: list[T], lengths: list[int], max_tokens: int, max_batch_size: int | None = None,
               packed: bool = False) -> list[list[int]]:
    """Indices of `items` (already sorted by ascending length) cut greedily into budget batches
    (padded area, or real frames when `packed`)."""
    batches, cur, cur_max, cur_sum = [], [], 0, 0
    for i, n in enumerate(lengths):
        m = max(cur_max, n)
        full = max_batch_size is not None and len(cur) >= max_batch_size
        cost = cur_sum + n if packed else (len(cur) + 1) * m
        if cur and (cost > max_tokens or full):
            batches.append(cur)
            cur, m, cur_sum = [], n, 0
        cur.append(i)
        cur_max, cur_sum = m, cur_sum + n
    if cur:
        batches.append(cur)
    return batches


def padding_ratio(lengths: list[int]) -> float:
    """Fraction of a padded (b, max_len) batch that is padding."""
    if not lengths:
        return 0.0
    return 1.0 - sum(lengths) / (len(lengths) * max(lengths))


class TokenBudgetBatcher:
    """The pooling stage with its state in the open: `pool` (the (length, item) pairs waiting) is
    what a resumed stream must get back (see metis/data/resume.py). Arguments as for
    `token_budget_batches`."""

    def __init__(self, max_tokens: int, *, pool_batches: int = 16, max_batch_size: int | None = None,
                 rng: random.Random | None = None, packed: bool = False):
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self.max_tokens, self.pool_batches, self.max_batch_size, self.rng = max_tokens, pool_batches, max_batch_size, rng
        self.packed = packed
        self.pool: list[tuple[int, T]] = []

    def push(self, item: T, n: int) -> list[list[T]]:
        """Add an item of `n` frames (n ≤ max_tokens); the batches this completes (often none)."""
        self.pool.append((n, item))
        if sum(p[0] for p in self.pool) >= self.pool_batches * self.max_tokens:
            return self._cut(flush=False)
        return []

    def flush(self) -> list[list[T]]:
        """Every pooled item in batches (the end of a finite stream)."""
        return self._cut(flush=True) if self.pool else []

    def _cut(self, flush: bool) -> list[list[T]]:
        self.pool.sort(key=lambda p: p[0])
        groups = cut_sorted(self.pool, [p[0] for p in self.pool], self.max_tokens, self.max_batch_size, self.packed)
        keep: list[tuple[int, T]] = []
        if not flush and groups:
            keep = [self.pool[i] for i in groups.pop()]
        out = [[self.pool[i][1] for i in g] for g in groups]
        self.pool = keep
        if self.rng is not None:
            self.rng.shuffle(out)
        return out


def token_budget_batches(items: Iterable[T], length: Callable[[T], int], max_tokens: int, *,
                         pool_batches: int = 16, max_batch_size: int | None = None,
                         rng: random.Random | None = None, packed: bool = False,
                         on_oversize: Callable[[T], None] | None = None) -> Iterator[list[T]]:
    """Group a stream of items into batches of at most `max_tokens` padded frames.

    Args:
        items: the stream; each item's size in frames is `length(item)`.
        max_tokens: budget per batch, padding included.
        pool_batches: pool size in batches' worth of frames (more: less padding, more memory).
        max_batch_size: optional cap on items per batch.
        rng: shuffles the emitted batches (training); None keeps sorted order (deterministic).
        packed: budget real frames, sum(lengths) ≤ max_tokens (for models that pack, `packing=True`).
        on_oversize: called for an item longer than `max_tokens` (it is dropped).

    Yields:
        Lists of items; every batch satisfies len(batch) · max(length) ≤ max_tokens (packed: sum ≤ max_tokens).
    """
    batcher = TokenBudgetBatcher(max_tokens, pool_batches=pool_batches, max_batch_size=max_batch_size, rng=rng,
                                 packed=packed)
    for item in items:
        n = int(length(item))
        if n > max_tokens:
            if on_oversize is not None:
                on_oversize(item)
            continue
        yield from batcher.push(item, n)
    yield from batcher.flush()
