"""A bounded store of recent utterances per speaker, filled from the training stream, to draw an
enrollment / prompt utterance of the same speaker (TSE, VC) or utterances of other speakers
(TSE interferers, babble)."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch

from metis.conditions import _random as R
from metis.conditions.signal import as_wave


class Entry(NamedTuple):
    key: str
    wav: torch.Tensor  # (n,)
    tokens: torch.Tensor | None  # (t,)


class SpeakerReservoir:
    """Up to `per_speaker` most recent utterances for each of up to `max_speakers` speakers.

    Speakers are evicted least-recently-added first when there are more than `max_speakers` or
    when the stored audio exceeds `max_total_samples` (None: no cap). Memory is about
    4 bytes × stored samples: 16 kHz × 5 s × 8 utterances ≈ 2.5 MB per speaker, hence the sample cap
    (default 30 min of 16 kHz audio ≈ 115 MB per data-loader worker).
    """

    def __init__(self, per_speaker: int = 8, max_speakers: int = 100_000,
                 max_total_samples: int | None = 16000 * 1800):
        if per_speaker < 1 or max_speakers < 1:
            raise ValueError(f"SpeakerReservoir: per_speaker and max_speakers must be >= 1, "
                             f"got {per_speaker}, {max_speakers}")
        if max_total_samples is not None and max_total_samples < 1:
            raise ValueError(f"SpeakerReservoir: max_total_samples must be >= 1 or None, got {max_total_samples}")
        self.per_speaker, self.max_speakers, self.max_total_samples = per_speaker, max_speakers, max_total_samples
        self._store: OrderedDict[str, list[Entry]] = OrderedDict()
        self.total_samples = 0

    def __len__(self) -> int:
        """Number of stored utterances."""
        return sum(len(v) for v in self._store.values())

    @property
    def speakers(self) -> list[str]:
        return list(self._store)

    def __contains__(self, speaker: str) -> bool:
        return speaker in self._store

    def add(self, speaker: str, key: str, wav: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
        """Store a copy of `wav` (n,) (and `tokens` (t,)); a key already stored for the speaker is
        replaced. Empty speaker names are refused (they would pool unrelated utterances)."""
        if not speaker:
            raise ValueError(f"SpeakerReservoir.add: empty speaker for key {key!r}")
        wav = as_wave(wav, f"SpeakerReservoir.add({key!r}) wav").detach().clone()
        tokens = tokens.detach().clone() if tokens is not None else None
        entries = self._store.pop(speaker, [])
        for e in entries:
            if e.key == key:
                self.total_samples -= e.wav.shape[0]
        entries = [e for e in entries if e.key != key]
        entries.append(Entry(key, wav, tokens))
        self.total_samples += wav.shape[0]
        while len(entries) > self.per_speaker:
            self.total_samples -= entries.pop(0).wav.shape[0]
        self._store[speaker] = entries  # most recently added speaker last
        self._evict()

    def _evict(self) -> None:
        while len(self._store) > self.max_speakers or (
                self.max_total_samples is not None and self.total_samples > self.max_total_samples
                and len(self._store) > 1):
            _, entries = self._store.popitem(last=False)
            self.total_samples -= sum(e.wav.shape[0] for e in entries)

    def draw(self, speaker: str, exclude_key: str | None, generator: torch.Generator
             ) -> tuple[str, torch.Tensor, torch.Tensor | None] | None:
        """(key, wav, tokens) of a stored utterance of `speaker` other than `exclude_key`, uniformly;
        None when there is none."""
        cands = [e for e in self._store.get(speaker, ()) if e.key != exclude_key]
        if not cands:
            return None
        e = cands[R.randint(generator, len(cands))]
        return e.key, e.wav, e.tokens

    def draw_other(self, speaker: str, generator: torch.Generator
                   ) -> tuple[str, str, torch.Tensor, torch.Tensor | None] | None:
        """(speaker, key, wav, tokens) of an utterance of another speaker (speaker uniform, then
        utterance uniform); None when no other speaker is stored."""
        others = [s for s in self._store if s != speaker]
        if not others:
            return None
        spk = others[R.randint(generator, len(others))]
        entries = self._store[spk]
        e = entries[R.randint(generator, len(entries))]
        return spk, e.key, e.wav, e.tokens

    def sample_wavs(self, k: int, generator: torch.Generator, exclude_speaker: str | None = None) -> list[torch.Tensor]:
        """Up to k waveforms of distinct speakers (other than `exclude_speaker`), for babble."""
        others = [s for s in self._store if s != exclude_speaker]
        order = torch.randperm(len(others), generator=generator)[:k].tolist()
        out = []
        for i in order:
            entries = self._store[others[i]]
            out.append(entries[R.randint(generator, len(entries))].wav)
        return out
