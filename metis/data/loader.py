"""Reading shards for training and validation: one factory, `build_loader`, no Lightning.

Pipeline inside each DataLoader worker:
    shard urls (split by rank and worker) -> tar samples (webdataset) -> parse + check (json and
    duration: metis/data/validate.py, the check tokenize and stats share; tokenizer identity, tokens)
    -> [train: sample shuffle buffer] -> token-budget batches -> decode + check (metis.audio.check,
    duration vs json) + resample audio (soundfile, torchaudio) -> collate -> batch dict (see collate.py)
    -> [batch_stage: e.g. the fine-tuning condition simulation]

Modes:
    train  endless: every (rank, worker) slot walks its own seeded random permutation of *all*
           shards, a new one on each pass, so no rank ever runs dry and DDP never waits on a short
           rank. Every batch carries its slot's exact position, so a checkpoint can resume the stream
           where the trainer was (metis/data/resume.py). `batches_per_epoch` (per rank) cuts the
           stream into epochs when the trainer wants them; a new epoch continues the stream.
    val    finite and deterministic: each sample is read exactly once over all ranks and workers
           (whole shards per (rank, worker) when there are enough shards, otherwise every slot
           reads all shards and keeps every k-th sample), in the same order every time.
"""

from __future__ import annotations

import json
import math
import os
import random
import tarfile
from collections import deque
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from metis import audio
from metis.data import skips as S
from metis.data.batching import TokenBudgetBatcher, token_budget_batches
from metis.data.collate import Item, collate
from metis.data.resume import POSITION_VERSION, PositionRecorder, SlotPosition, shard_order, shards_digest
from metis.data.shards import (REQUIRED_JSON, TOKENIZER_MEMBER, audio_ext, expand_shards, load_npy, read_sample_at,
                               read_samples)
from metis.data.validate import Rejected, SampleRules

FIELDS = ("sem", "ac", "vis", "wav16", "wav24")
WAV_RATES = {"wav16": 16000, "wav24": 24000}
SKIPS_ONLY = "__skips_only__"  # a record carrying only skip counts; MetisLoader absorbs it
POSITION = "__position__"      # a train batch's slot position (metis/data/resume.py); MetisLoader takes it
SHARD_READ_ERRORS = (tarfile.TarError, OSError, EOFError)
#: a last pipeline stage run in the workers: (batches of one pass, mode, pass key) -> batches
#: (e.g. `metis.conditions.builders.ConditionStage`); the pass key identifies the pass reproducibly
BatchStage = Callable[[Iterator[dict], str, str], Iterator[dict]]


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world): explicit values, else torch.distributed when initialised, else RANK/WORLD_SIZE."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """The per-worker pipeline; yields collated batch dicts. Build it through `build_loader`."""

    def __init__(self, urls: list[str], *, mode: Literal["train", "val"], fields: tuple[str, ...],
                 max_tokens: int, rules: SampleRules, seed: int, frame_rate: float,
                 shuffle_buffer: int, pool_batches: int, max_batch_size: int | None, packed: bool,
                 batches_per_epoch: int | None, tokenizer_identity: dict | None,
                 acoustic_identity: dict | None,
                 rank: int | None, world_size: int | None, batch_stage: BatchStage | None = None):
        self.urls, self.mode, self.fields = urls, mode, fields
        self.max_tokens = max_tokens
        self.seed, self.frame_rate = seed, frame_rate
        self.shuffle_buffer, self.pool_batches, self.max_batch_size = shuffle_buffer, pool_batches, max_batch_size
        self.packed = packed
        self.batches_per_epoch = batches_per_epoch
        self.identities = {"sem": tokenizer_identity, "ac": acoustic_identity}
        self.rules = rules
        self.batch_stage = batch_stage
        self._rank_arg, self._world_arg = rank, world_size
        self.rank, self.world_size = dist_info(rank, world_size)
        self.start: dict[int, dict] = {}  # slot -> SlotPosition dict to continue from (set by MetisLoader)
        self.worker_shift = 0  # DataLoader worker w plays slot (w + shift) mod num_workers (resume.py)
        self._identities: dict[str, dict] = {}  # shard url -> its __tokenizer__.json (per worker)

    def resolve_dist(self) -> None:
        self.rank, self.world_size = dist_info(self._rank_arg, self._world_arg)

    # ------------------------------------------------------------------ shards and samples
    def _slot(self) -> tuple[int, int]:
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        return self.rank * nw + (wid + self.worker_shift) % nw, self.world_size * nw

    def _samples(self, urls, counter: S.SkipCounter) -> Iterator[dict]:
        """The samples of `urls` in order; a shard that cannot be read is counted and left."""
        for url in urls:
            try:
                for _, _, sample in read_samples(url):
                    yield sample
            except SHARD_READ_ERRORS as exn:
                counter.skip(S.SHARD_ERROR, url, f"{type(exn).__name__}: {exn}")

    def _walk(self, pos: SlotPosition, counter: S.SkipCounter) -> Iterator[dict]:
        """Train: the samples of this slot's shard passes from `pos` on, keeping `pos` up to date
        (it always names the next sample to read). Raises when a whole pass yields nothing."""
        n = len(self.urls)
        while True:
            order = shard_order(self.seed, pos.slot, pos.n_pass, n)
            whole_pass, seen = pos.shard == 0 and pos.offset == 0, False
            while pos.shard < n:
                current, url = pos.shard, self.urls[order[pos.shard]]
                try:
                    for offset, after, sample in read_samples(url, pos.offset):
                        if after is None:
                            pos.shard, pos.offset = current + 1, 0
                        else:
                            pos.offset = after
                        sample["__offset__"] = offset
                        seen = True
                        yield sample
                except SHARD_READ_ERRORS as exn:
                    counter.skip(S.SHARD_ERROR, url, f"{type(exn).__name__}: {exn}")
                if pos.shard == current:  # an unreadable or empty shard: go on with the next
                    pos.shard, pos.offset = current + 1, 0
            if whole_pass and not seen:
                raise RuntimeError(f"no readable sample in a whole pass over the {n} train shards "
                                   f"({self.urls[0]}, ...): see the shard_error warnings")
            pos.n_pass, pos.shard, pos.offset = pos.n_pass + 1, 0, 0

    def _identity(self, url: str, counter: S.SkipCounter) -> dict:
        """The tokenizer identities of shard `url` (its first member), read once per worker."""
        if url not in self._identities:
            ids: dict = {}
            try:
                for _, _, first in read_samples(url):
                    if first["__key__"] == TOKENIZER_MEMBER:
                        ids = json.loads(first["json"])
                    break
            except (KeyError, ValueError) as exn:
                counter.skip(S.BAD_JSON, f"{url}:{TOKENIZER_MEMBER}", str(exn))
            except SHARD_READ_ERRORS:
                pass  # the read of the sample itself reports it
            self._identities[url] = ids
        return self._identities[url]

    def _train_item(self, s: dict, counter: S.SkipCounter) -> Item | None:
        url, key = s["__url__"], s["__key__"]
        if key == TOKENIZER_MEMBER:
            return None
        try:
            item = self._item(s, url, key, self._identity(url, counter), counter)
        except Rejected as sk:
            counter.skip(sk.reason, f"{url}:{key}", sk.detail)
            return None
        item.offset = s["__offset__"]
        return item

    def _reread(self, ref: list, counter: S.SkipCounter) -> Item | None:
        """The sample a saved position refers to, read again from its shard."""
        url, offset = ref
        try:
            s = read_sample_at(url, int(offset))
        except (*SHARD_READ_ERRORS, ValueError) as exn:
            counter.skip(S.SHARD_ERROR, f"{url}@{offset}", f"cannot re-read a resumed sample ({type(exn).__name__}: {exn})")
            return None
        s["__offset__"] = int(offset)
        return self._train_item(s, counter)

    def _parse(self, samples: Iterator[dict], counter: S.SkipCounter,
               keep: tuple[int, int] | None) -> Iterator[Item]:
        """Raw tar samples -> checked Items; `keep=(slot, n)` keeps every n-th sample (val split)."""
        shard_ids: dict[str, dict] = {}
        index = -1
        for s in samples:
            url, key = s.get("__url__", "?"), s.get("__key__", "?")
            if key == TOKENIZER_MEMBER:
                try:
                    shard_ids = {url: json.loads(s["json"])}
                except (KeyError, ValueError) as exn:
                    counter.skip(S.BAD_JSON, f"{url}:{TOKENIZER_MEMBER}", str(exn))
                    shard_ids = {url: {}}
                continue
            index += 1
            if keep is not None and index % keep[1] != keep[0]:
                continue
            where = f"{url}:{key}"
            try:
                yield self._item(s, url, key, shard_ids.get(url, {}), counter)
            except Rejected as sk:
                counter.skip(sk.reason, where, sk.detail)

    def _item(self, s: dict, url: str, key: str, shard_ids: dict, counter) -> Item:
        meta, dur = self.rules.meta(s)
        item = Item(key=key, url=url, meta=meta, length=math.ceil(dur * self.frame_rate))
        lengths = []
        for name in ("sem", "ac", "vis"):
            if name not in self.fields:
                continue
            member = f"{name}.npy"
            if member not in s:
                raise Rejected(S.MISSING_FIELD, f"no {member} member")
            want = self.identities.get(name)
            if want is not None and shard_ids.get(name) != want:
                raise Rejected(S.TOKENIZER_MISMATCH,
                               f"{name} tokens made by {shard_ids.get(name)}, configured {want}")
            try:
                arr = load_npy(s[member])
            except Exception as exn:
                raise Rejected(S.BAD_TOKENS, f"{member} unreadable ({type(exn).__name__}: {exn})") from None
            arr = self._check_array(name, arr, dur)
            setattr(item, name, arr)
            lengths.append(arr.shape[0])
        if lengths:
            item.length = max(lengths)
        if any(f in self.fields for f in WAV_RATES):
            ext = audio_ext(s)
            if ext is None:
                raise Rejected(S.MISSING_FIELD, "no audio member (flac/mp3/wav/...)")
            item.audio = s[ext]
        return item

    def _check_array(self, name: str, arr: np.ndarray, dur: float) -> np.ndarray:
        if name == "ac":
            if arr.ndim != 2 or arr.shape[0] != 12:
                raise Rejected(S.BAD_TOKENS, f"ac.npy shape {arr.shape}, expected (12, t)")
            arr = np.ascontiguousarray(arr.T)  # stored (12, t) -> (t, 12)
        elif name == "sem" and arr.ndim != 1:
            raise Rejected(S.BAD_TOKENS, f"sem.npy shape {arr.shape}, expected (t,)")
        if arr.shape[0] == 0:
            raise Rejected(S.BAD_TOKENS, f"{name}.npy is empty")
        if name in ("sem", "ac") and arr.dtype.kind not in "iu":
            raise Rejected(S.BAD_TOKENS, f"{name}.npy dtype {arr.dtype} is not integer")
        if name == "vis":
            if not np.isfinite(arr).all():
                raise Rejected(S.BAD_TOKENS, "vis.npy has NaN/inf")
            return arr
        expect = dur * self.frame_rate
        if abs(arr.shape[0] - expect) > max(2.0, 0.02 * expect):
            raise Rejected(S.BAD_TOKENS, f"{name}.npy has {arr.shape[0]} frames, duration says {expect:.0f}")
        return arr

    def _decode(self, items: list[Item], counter: S.SkipCounter) -> list[Item]:
        wants = [f for f in WAV_RATES if f in self.fields]
        if not wants:
            return items
        out = []
        for it in items:
            try:
                wav, sr = self.rules.audio(it.audio, float(it.meta["duration"]))
            except Rejected as r:
                counter.skip(r.reason, f"{it.url}:{it.key}", r.detail)
                continue
            for f in wants:
                it.wavs[f] = audio.resample(torch.from_numpy(wav), sr, WAV_RATES[f])
            it.audio = None  # free the encoded bytes
            out.append(it)
        return out

    # ------------------------------------------------------------------ the stream
    def _train_stream(self, slot: int, counter: S.SkipCounter) -> Iterator[tuple[list[Item], dict]]:
        """Train: (decoded batch items, this slot's position after them), endlessly.

        Stages: shard passes (`_walk`) -> checked Items -> shuffle buffer (reservoir of
        `shuffle_buffer`) -> token-budget pool (`TokenBudgetBatcher`) -> batches, every piece of
        state held here in the open so that the position after each batch can be saved.
        """
        saved = self.start.get(slot)
        pos = SlotPosition.from_dict(saved) if saved else SlotPosition(slot=slot)
        rng = pos.random(f"{self.seed}/{slot}")
        batcher = TokenBudgetBatcher(self.max_tokens, pool_batches=self.pool_batches,
                                     max_batch_size=self.max_batch_size, rng=rng, packed=self.packed)

        def reread(refs):
            return [it for it in (self._reread(r, counter) for r in refs) if it is not None]

        buffer = reread(pos.buffer)
        batcher.pool = [(it.length, it) for it in reread(pos.pool)]
        pending = deque(g for g in (reread(refs) for refs in pos.pending) if g)
        items = (it for it in (self._train_item(s, counter) for s in self._walk(pos, counter)) if it is not None)

        def refs(group):
            return [[it.url, it.offset] for it in group]

        while True:
            if pending:
                group = self._decode(pending.popleft(), counter)
                if group:
                    pos.batches += 1
                    pos.rng, pos.buffer = rng.getstate(), refs(buffer)
                    pos.pool, pos.pending = refs(it for _, it in batcher.pool), [refs(g) for g in pending]
                    yield group, pos.to_dict()
                continue
            item = next(items)
            if self.shuffle_buffer > 1:
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(item)
                    continue
                j = rng.randrange(self.shuffle_buffer)
                item, buffer[j] = buffer[j], item
            if item.length > self.max_tokens:
                counter.skip(S.TOO_LONG, f"{item.url}:{item.key}", f"{item.length} frames > max_tokens {self.max_tokens}")
                continue
            pending.extend(batcher.push(item, item.length))

    def __iter__(self) -> Iterator[dict]:
        slot, n_slots = self._slot()
        stream = self._stream(slot, n_slots)
        if self.batch_stage is None:
            yield from stream
            return
        # the stage sees the real batches; a trailing skip-count record passes around it
        tail: list[dict] = []

        def real() -> Iterator[dict]:
            for b in stream:
                if b.get(SKIPS_ONLY):
                    tail.append(b)
                else:
                    yield b

        key = f"{self.seed}/{slot}"
        if self.mode == "train":  # batch i of a slot draws its conditions from (key, i): exact after a resume too
            self.batch_stage.start = int((self.start.get(slot) or {}).get("batches", 0))
        yield from self.batch_stage(real(), self.mode, key)
        yield from tail

    def _stream(self, slot: int, n_slots: int) -> Iterator[dict]:
        counter = S.SkipCounter()
        if self.mode == "train":
            limit = None
            if self.batches_per_epoch is not None:
                wi = get_worker_info()
                limit = math.ceil(self.batches_per_epoch / (wi.num_workers if wi is not None else 1))
            for emitted, (group, position) in enumerate(self._train_stream(slot, counter), start=1):
                batch = collate(group, self.fields)
                batch["skipped"] = counter.delta()
                batch[POSITION] = position
                yield batch
                if limit is not None and emitted >= limit:
                    return
            return
        if len(self.urls) >= n_slots:
            samples, keep = self._samples(self.urls[slot::n_slots], counter), None
        else:
            samples, keep = self._samples(self.urls, counter), (slot, n_slots)
        items = self._parse(samples, counter, keep)

        def oversize(it: Item) -> None:
            counter.skip(S.TOO_LONG, f"{it.url}:{it.key}", f"{it.length} frames > max_tokens {self.max_tokens}")

        batches = token_budget_batches(items, lambda it: it.length, self.max_tokens,
                                       pool_batches=self.pool_batches, max_batch_size=self.max_batch_size,
                                       rng=None, packed=self.packed, on_oversize=oversize)
        for group in batches:
            group = self._decode(group, counter)
            if not group:
                continue
            batch = collate(group, self.fields)
            batch["skipped"] = counter.delta()
            yield batch
        tail = counter.delta()
        if tail:  # skips after the last batch (or a worker whose samples were all bad): ship them too
            yield {SKIPS_ONLY: True, "skipped": tail}


class MetisLoader(DataLoader):
    """A DataLoader over a `ShardStream` that adds up the workers' skip counts in `self.skips`
    (a `SkipCounter`; log `loader.skips.as_dict()`), resolves rank/world in the main process
    before the workers start, and, for a train stream, keeps its exact position: `position(n)`
    after the n-th batch consumed, `resume_from(state)` to continue there (metis/data/resume.py)."""

    def _recorder(self) -> PositionRecorder:
        if getattr(self, "_positions", None) is None:
            keep = max(64, 4 * max(1, self.num_workers) * ((self.prefetch_factor or 2) + 1))
            self._positions = PositionRecorder(keep=keep)
        return self._positions

    def position(self, consumed: int | None = None) -> dict:
        """The train stream's state after `consumed` batches of this rank (None: all handed out)."""
        ds = self.dataset
        ds.resolve_dist()
        slots, done = self._recorder().at(consumed)
        return {"version": POSITION_VERSION, "seed": int(ds.seed), "world_size": ds.world_size,
                "num_workers": int(self.num_workers), "shards": shards_digest(ds.urls), "n_shards": len(ds.urls),
                "batches": done, "slots": slots}

    def position_mismatch(self, state: dict) -> str | None:
        """Why `state` cannot be continued exactly by this loader (None: it can)."""
        ds = self.dataset
        ds.resolve_dist()
        here = {"version": POSITION_VERSION, "world_size": ds.world_size, "num_workers": int(self.num_workers),
                "shards": shards_digest(ds.urls)}
        diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in here.items() if state.get(k) != v]
        return ", ".join(diff) or None

    def resume_from(self, state: dict) -> None:
        """Continue the train stream exactly at `state` (from `position`; check `position_mismatch`)."""
        why = self.position_mismatch(state)
        if why:
            raise ValueError(f"the saved stream position does not fit this loader: {why}")
        self.dataset.seed = int(state["seed"])
        self._positions = PositionRecorder({int(k): v for k, v in state["slots"].items()}, int(state["batches"]),
                                           keep=self._recorder().keep)

    def __iter__(self):
        ds = self.dataset
        train = isinstance(ds, ShardStream) and ds.mode == "train"
        if isinstance(ds, ShardStream):
            ds.resolve_dist()
        if train:  # continue where the batches handed out so far end (a new epoch goes on with the stream)
            ds.start, done = self._recorder().at()
            ds.worker_shift = done % max(1, self.num_workers)
        if not hasattr(self, "skips"):
            self.skips = S.SkipCounter()
        for batch in super().__iter__():
            self.skips.add(batch.get("skipped", {}))
            if batch.get(SKIPS_ONLY):
                continue
            if train:
                position = batch.pop(POSITION)
                batch["stream_batch"] = self._recorder().record(position["slot"], position)
            yield batch


def build_loader(shards: str | Sequence[str], *, mode: Literal["train", "val"] = "train",
                 max_tokens: int = 10_000, fields: Sequence[str] = ("sem",), num_workers: int = 2,
                 seed: int = 0, tokenizer_identity: dict | None = None,
                 acoustic_identity: dict | None = None, min_dur: float = 0.5, max_dur: float = 30.0,
                 frame_rate: float = 50.0, shuffle_buffer: int = 500, pool_batches: int | None = None,
                 max_batch_size: int | None = None, packed: bool = False, batches_per_epoch: int | None = None,
                 rank: int | None = None, world_size: int | None = None,
                 required_json: Sequence[str] = REQUIRED_JSON, min_std: float = audio.MIN_STD,
                 max_clipped_fraction: float = audio.MAX_CLIPPED_FRACTION, pin_memory: bool = False,
                 prefetch_factor: int | None = 2, persistent_workers: bool = False,
                 batch_stage: BatchStage | None = None) -> MetisLoader:
    """Build the DataLoader the training/validation code iterates (batches formed inside; batch_size=None).

    Args:
        shards: shard list or pattern(s): brace patterns, globs, directories, URLs ("::" joins).
        mode: "train" (endless, shuffled, resampled shards) or "val" (finite, deterministic, each
            sample once over all ranks and workers).
        max_tokens: frames per batch including padding (len(batch) · max_len ≤ max_tokens).
        fields: what each batch carries: "sem" (SSL tokens), "ac" (acoustic tokens), "vis" (visual
            features), "wav16"/"wav24" (raw audio resampled to 16/24 kHz).
        tokenizer_identity / acoustic_identity: the configured tokenizers' `identity()`; samples
            from shards made by another tokenizer are skipped and counted (`tokenizer_mismatch`).
        min_dur, max_dur: duration filter in seconds (from each sample's json).
        shuffle_buffer: sample shuffle buffer (train).
        pool_batches: bucketing pool in batches' worth of frames (more: less padding, more memory).
            None: 64 for token-only fields (~2% padding at 10K tokens), 16 when raw audio is
            loaded (~7%; the pool holds the encoded audio of 16 batches per worker).
        max_batch_size: optional cap on samples per batch.
        packed: count real frames against max_tokens (sum of lengths), for a model that packs its
            batches (`model.net.packing=true`: padding costs no compute); False: padded area.
        batches_per_epoch: train only: batches per rank per epoch (None: endless).
        rank, world_size: override torch.distributed / RANK, WORLD_SIZE (resolved when iterated).
        required_json: json fields a sample must have.
        min_std, max_clipped_fraction: the limits of `metis.audio.check` for decoded audio (a sample
            that is constant or clipped flat is skipped and counted); min_dur, max_dur, required_json
            and these make the `SampleRules` that `tokenize` and `stats` apply too.
        batch_stage: a last stage run on the collated batches inside the workers (`BatchStage`).

    Returns:
        MetisLoader yielding the batch dicts of `metis.data.collate`; `loader.skips` totals skips.

    Raises:
        ValueError / FileNotFoundError: bad fields, budget, or a shard pattern matching nothing.
    """
    fields = tuple(fields)
    bad = [f for f in fields if f not in FIELDS]
    if bad or not fields:
        raise ValueError(f"fields {fields}: each must be one of {FIELDS}")
    if mode not in ("train", "val"):
        raise ValueError(f"mode must be 'train' or 'val', got {mode!r}")
    if max_dur * frame_rate > max_tokens:
        raise ValueError(f"max_dur={max_dur}s is {max_dur * frame_rate:.0f} frames, more than max_tokens="
                         f"{max_tokens}: such samples could never fit a batch")
    if pool_batches is None:
        pool_batches = 16 if any(f in WAV_RATES for f in fields) else 64
    urls = expand_shards(shards)
    rules = SampleRules(min_dur=min_dur, max_dur=max_dur, required_json=tuple(required_json), min_std=min_std,
                        max_clipped_fraction=max_clipped_fraction)
    ds = ShardStream(urls, mode=mode, fields=fields, max_tokens=max_tokens, rules=rules,
                     seed=seed, frame_rate=frame_rate, shuffle_buffer=shuffle_buffer, pool_batches=pool_batches,
                     max_batch_size=max_batch_size, packed=packed, batches_per_epoch=batches_per_epoch if mode == "train" else None,
                     tokenizer_identity=tokenizer_identity, acoustic_identity=acoustic_identity,
                     rank=rank, world_size=world_size, batch_stage=batch_stage)
    # Its own generator: starting an iterator (here: every validation pass) must not draw from the
    # global torch RNG, which the trainer restores on resume (masking draws from it).
    return MetisLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                       generator=torch.Generator().manual_seed(seed),
                       prefetch_factor=prefetch_factor if num_workers > 0 else None,
                       persistent_workers=persistent_workers and num_workers > 0)
