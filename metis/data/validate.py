"""The one check of a shard sample, shared by every tool that reads shards: the loader, `tokenize`
and `stats` (`python -m metis.data ...`).

A sample is used only when its json parses to an object with the required fields, its duration is a
positive number within [min_dur, max_dur], and, when its audio is decoded, the audio passes
`metis.audio.check` (decodable, finite, not silent, not constant, not clipped flat) and lasts what the
json says. Anything else raises `Rejected` with the skip-counter reason (metis/data/skips.py) and the
cause; `checked_samples` counts it and warns with the shard and key. `prepare` writes the json itself
and checks each piece's audio with `metis.audio.check`, so its shards pass this check as written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from metis import audio
from metis.data import skips as S
from metis.data.shards import REQUIRED_JSON, TOKENIZER_MEMBER, audio_ext

# The decoded audio may differ from the json's duration by max(DURATION_TOLERANCE_S, DURATION_TOLERANCE x
# duration): codecs pad a few ms, a wrong sample rate or a truncated file is far beyond it.
DURATION_TOLERANCE_S = 0.1
DURATION_TOLERANCE = 0.02


class Rejected(Exception):
    """A sample that is not used: `reason` is its skip-counter reason, `detail` the cause."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class SampleRules:
    """What a sample must satisfy: the loader's `min_dur`, `max_dur`, `required_json`, and the limits of
    `metis.audio.check` (`min_std`, `max_clipped_fraction`); `tokenize` and `stats` take the same values,
    default the loader's defaults."""

    min_dur: float = 0.5
    max_dur: float = 30.0
    required_json: tuple[str, ...] = REQUIRED_JSON
    min_std: float = audio.MIN_STD
    max_clipped_fraction: float = audio.MAX_CLIPPED_FRACTION

    def meta(self, sample: dict) -> tuple[dict, float]:
        """(json object, duration in seconds) of a raw tar sample. Raises Rejected."""
        if "json" not in sample:
            raise Rejected(S.MISSING_FIELD, "no .json member")
        try:
            meta = json.loads(sample["json"])
        except ValueError as exn:
            raise Rejected(S.BAD_JSON, f"invalid json ({exn})") from None
        if not isinstance(meta, dict):
            raise Rejected(S.BAD_JSON, "json is not an object")
        missing = [f for f in self.required_json if f not in meta]
        if missing:
            raise Rejected(S.MISSING_FIELD, f"json lacks field(s) {missing}")
        dur = _float(meta.get("duration"))
        if dur is None or math.isnan(dur):
            raise Rejected(S.BAD_JSON, f"duration {meta.get('duration')!r} is not a number")
        if dur <= 0:
            raise Rejected(S.EMPTY_AUDIO, f"duration {dur}")
        if dur < self.min_dur:
            raise Rejected(S.TOO_SHORT, f"duration {dur:.2f}s < min_dur {self.min_dur}")
        if dur > self.max_dur:
            raise Rejected(S.TOO_LONG, f"duration {dur:.2f}s > max_dur {self.max_dur}")
        return meta, dur

    def audio(self, data: bytes, duration: float, name: str = "audio") -> tuple[np.ndarray, int]:
        """Decode and check a sample's encoded audio against its json `duration`. Raises Rejected."""
        try:
            wav, sr = audio.read(data, name=name, validate=False)
            audio.check(wav, name, min_std=self.min_std, max_clipped_fraction=self.max_clipped_fraction)
        except audio.AudioError as exn:
            raise Rejected(exn.reason, str(exn)) from None
        seconds = len(wav) / sr
        if abs(seconds - duration) > max(DURATION_TOLERANCE_S, DURATION_TOLERANCE * duration):
            raise Rejected(S.DURATION_MISMATCH, f"audio {seconds:.2f}s, json {duration:.2f}s")
        return wav, sr

    def sample(self, sample: dict) -> tuple[dict, np.ndarray, int]:
        """(json, wav, sr) of a raw tar sample whose metadata and audio pass. Raises Rejected."""
        meta, dur = self.meta(sample)
        ext = audio_ext(sample)
        if ext is None:
            raise Rejected(S.MISSING_FIELD, "no audio member (flac/mp3/wav/...)")
        wav, sr = self.audio(sample[ext], dur, f"{ext} audio")
        return meta, wav, sr


def checked_samples(samples, rules: SampleRules, skips: S.SkipCounter) -> Iterator[tuple[dict, dict, np.ndarray, int]]:
    """(sample, json, wav, sr) of each sample that passes `rules` (the tokenizer member passed over);
    every other one is counted in `skips` under its reason, with its shard and key."""
    for sample in samples:
        if sample["__key__"] == TOKENIZER_MEMBER:
            continue
        try:
            meta, wav, sr = rules.sample(sample)
        except Rejected as r:
            skips.skip(r.reason, f"{sample.get('__url__', 'shard')}:{sample['__key__']}", r.detail)
            continue
        yield sample, meta, wav, sr


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
