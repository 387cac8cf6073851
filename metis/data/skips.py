"""Counting what the data pipeline throws away.

Every sample that is dropped (undecodable audio, missing json field, tokenizer mismatch, ...) is
counted under a short reason, and a warning names the shard and key. Worker processes cannot share
memory with the trainer, so each worker keeps its own `SkipCounter` and ships the counts that grew
since its previous batch inside that batch (`batch["skipped"]`); the main process adds them up
(`MetisLoader.skips`). Totals are therefore exact whatever the number of workers.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("metis.data")

# Reasons used across the package (free-form strings are allowed too).
UNDECODABLE = "undecodable_audio"
BAD_JSON = "bad_json"
MISSING_FIELD = "missing_field"
EMPTY_AUDIO = "empty_audio"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
NAN_AUDIO = "nan_audio"
SILENT_AUDIO = "silent_audio"      # all zero
CONSTANT_AUDIO = "constant_audio"  # no variation (DC): metis.audio.MIN_STD
CLIPPED_AUDIO = "clipped_audio"    # nearly all samples at full scale: metis.audio.MAX_CLIPPED_FRACTION
DURATION_MISMATCH = "duration_mismatch"
TOKENIZER_MISMATCH = "tokenizer_mismatch"
BAD_TOKENS = "bad_tokens"
SHARD_ERROR = "shard_error"


class SkipCounter:
    """Counts skipped samples per reason; warns for the first `warn_limit` of each reason."""

    def __init__(self, warn_limit: int = 20):
        self.totals: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        self.warn_limit = warn_limit

    def skip(self, reason: str, where: str = "", detail: str = "") -> None:
        """Record one dropped sample; `where` names the shard/key, `detail` the cause."""
        self.totals[reason] += 1
        if self.totals[reason] <= self.warn_limit:
            msg = f"skipped sample ({reason}) {where}: {detail}".rstrip(": ")
            if self.totals[reason] == self.warn_limit:
                msg += f" [further '{reason}' warnings suppressed]"
            log.warning(msg)

    def add(self, counts: dict[str, int]) -> None:
        """Merge counts from elsewhere (a worker's delta)."""
        for k, v in counts.items():
            if v:
                self.totals[k] += int(v)

    def delta(self) -> dict[str, int]:
        """Counts that grew since the previous call (what a worker ships with its next batch)."""
        out = {k: v - self._reported[k] for k, v in self.totals.items() if v != self._reported[k]}
        self._reported = Counter(self.totals)
        return out

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.totals.items()))

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"
