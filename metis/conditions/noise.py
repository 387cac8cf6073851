"""Noise sources for speech enhancement (and optional TSE background noise).

`NoiseBank.sample(n, generator)` returns (n,) noise, at an arbitrary level (mixing sets the SNR):
  * files:    `from_folder` / `from_shards` (e.g. WHAM!, DEMAND), indexed lazily, a random window read
              on demand, looped when shorter than n;
  * coloured: `coloured()` white / pink / brown noise generated on the fly;
  * babble:   `babble(utterances)` the sum of 3..6 other utterances, each at equal power.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from metis.conditions import _random as R
from metis.conditions.audio_files import (AudioError, FileSource, MemberSource, index_shard, list_audio,
                                          read_window)
from metis.conditions.signal import SILENCE_POWER, as_wave, power, random_fit
from metis.data.skips import SkipCounter

# Power-spectral-density exponent alpha, PSD ∝ 1 / f^alpha.
COLOUR_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0, "violet": -2.0}


def coloured_noise(n: int, colour: str | float, generator: torch.Generator) -> torch.Tensor:
    """(n,) Gaussian noise with PSD ∝ 1/f^alpha (alpha from COLOUR_EXPONENTS or a float), unit RMS,
    zero mean (the DC bin is removed)."""
    if n <= 0:
        raise ValueError(f"coloured_noise: n must be positive, got {n}")
    if isinstance(colour, str):
        if colour not in COLOUR_EXPONENTS:
            raise ValueError(f"coloured_noise: unknown colour {colour!r}; known: {sorted(COLOUR_EXPONENTS)}")
        alpha = COLOUR_EXPONENTS[colour]
    else:
        alpha = float(colour)
    white = torch.randn(n, generator=generator)
    if n == 1:
        return white.sign() + (white == 0).float()
    spec = torch.fft.rfft(white)
    k = torch.arange(spec.shape[0], dtype=torch.float32)
    k[0] = 1.0
    shape = k.pow(-alpha / 2.0)
    shape[0] = 0.0
    x = torch.fft.irfft(spec * shape, n=n)
    return x / x.pow(2).mean().sqrt().clamp_min(1e-12)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / math.sqrt(max(power(x), 1e-20))


class NoiseBank:
    """A source of noise segments; build it with one of the class constructors."""

    MAX_TRIES = 8  # windows drawn before a silent or bad source is reported

    def __init__(self, kind: str, *, sources: Sequence[FileSource | MemberSource] = (),
                 shards: Sequence[str] = (), colours: Sequence[str] = (),
                 utterances=None, n_talkers: tuple[int, int] = (3, 6), sample_rate: int = 16000,
                 name: str = ""):
        if kind not in ("files", "shards", "coloured", "babble"):
            raise ValueError(f"NoiseBank: unknown kind {kind!r}")
        self.kind, self.sample_rate, self.name = kind, int(sample_rate), name
        self.skips = SkipCounter()  # bad files' windows left out, by noise_<reason> (warned with the file)
        self.sources = list(sources)
        self.shards = list(shards)
        self._shard_index: dict[str, list[MemberSource]] = {}
        self.colours = tuple(colours)
        self.utterances = utterances
        lo, hi = (int(v) for v in n_talkers)
        if not 1 <= lo <= hi:
            raise ValueError(f"NoiseBank.babble: n_talkers must be (lo, hi) with 1 <= lo <= hi, got {n_talkers!r}")
        self.n_talkers = (lo, hi)

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | os.PathLike, sample_rate: int = 16000) -> "NoiseBank":
        """All audio files under `path` (recursive); only the listing happens now."""
        files = list_audio(path, "noise")
        return cls("files", sources=[FileSource(p) for p in files], sample_rate=sample_rate, name=str(path))

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike], sample_rate: int = 16000) -> "NoiseBank":
        if not paths:
            raise AudioError("NoiseBank.from_files: empty file list")
        return cls("files", sources=[FileSource(os.fspath(p)) for p in paths], sample_rate=sample_rate,
                   name=f"{len(paths)} files")

    @classmethod
    def from_shards(cls, pattern, sample_rate: int = 16000) -> "NoiseBank":
        """Audio members of local tar shards (brace patterns, globs, directories, lists as in
        `metis.data.shards.expand_shards`). A shard's tar headers are read when it is first drawn."""
        from metis.data.shards import expand_shards

        return cls("shards", shards=expand_shards(pattern), sample_rate=sample_rate, name=str(pattern))

    @classmethod
    def coloured(cls, colours: Sequence[str] = ("white", "pink", "brown"), sample_rate: int = 16000) -> "NoiseBank":
        for c in colours:
            if c not in COLOUR_EXPONENTS:
                raise ValueError(f"NoiseBank.coloured: unknown colour {c!r}; known: {sorted(COLOUR_EXPONENTS)}")
        if not colours:
            raise ValueError("NoiseBank.coloured: no colours given")
        return cls("coloured", colours=colours, sample_rate=sample_rate, name="coloured")

    @classmethod
    def babble(cls, utterances, n_talkers: tuple[int, int] = (3, 6), sample_rate: int = 16000) -> "NoiseBank":
        """Babble from `utterances`: a sequence of (n,) tensors at `sample_rate`, or a
        `SpeakerReservoir` (read at each draw, so it follows the training stream)."""
        if utterances is None:
            raise ValueError("NoiseBank.babble: utterances is None")
        return cls("babble", utterances=utterances, n_talkers=n_talkers, sample_rate=sample_rate, name="babble")

    def __len__(self) -> int:
        """Number of files (folder), shards (shards), colours or utterances."""
        if self.kind == "files":
            return len(self.sources)
        if self.kind == "shards":
            return len(self.shards)
        if self.kind == "coloured":
            return len(self.colours)
        return len(self.utterances)

    def __repr__(self) -> str:
        return f"NoiseBank({self.kind}, {self.name!r}, n={len(self)}, sample_rate={self.sample_rate})"

    # ---- drawing ------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,) float32 noise at `sample_rate` (level arbitrary, not silent)."""
        return self.draw(n, generator)[0]

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """(noise (n,), info) with info["noise"] = kind and the file / colour / talker count."""
        if n <= 0:
            raise ValueError(f"NoiseBank.sample: n must be positive, got {n}")
        if self.kind == "coloured":
            colour = self.colours[R.randint(generator, len(self.colours))]
            return coloured_noise(n, colour, generator), {"noise": "coloured", "noise_colour": colour}
        if self.kind == "babble":
            return self._babble(n, generator)
        return self._file(n, generator)

    def validate(self) -> int:
        """Read every file's header now (an eager check of a folder/shard set); returns the count.
        Raises AudioError naming the first bad file."""
        count = 0
        if self.kind == "shards":
            for s in self.shards:
                for m in self._members(s):
                    m.frames()
                    count += 1
        for src in self.sources:
            src.frames()
            count += 1
        return count

    def _members(self, shard: str) -> list[MemberSource]:
        if shard not in self._shard_index:
            members = index_shard(shard)
            if not members:
                raise AudioError(f"{shard}: shard holds no audio members")
            self._shard_index[shard] = members
        return self._shard_index[shard]

    def _pick_source(self, generator: torch.Generator) -> FileSource | MemberSource:
        if self.kind == "files":
            return self.sources[R.randint(generator, len(self.sources))]
        members = self._members(self.shards[R.randint(generator, len(self.shards))])
        return members[R.randint(generator, len(members))]

    def _file(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """A window of a random file. A window `metis.audio.check` refuses (clipped flat, constant, NaN,
        undecodable file) is never mixed in: it is counted in `self.skips` under its reason, with the
        file, and another is drawn, as for a silent window. The draws do not depend on what was refused
        before, so a resumed run draws the same noise."""
        names, last = [], ""
        for _ in range(self.MAX_TRIES):
            src = self._pick_source(generator)
            name = getattr(src, "path", None) or src.name
            names.append(name)
            try:
                seg = read_window(src, n, self.sample_rate, generator)
            except AudioError as exn:
                last = str(exn)
                if exn.reason != "silent_audio":  # a silent window of a good file is no fault of the file
                    self.skips.skip(f"noise_{exn.reason}", name, last.removeprefix(f"{name}: "))
                continue
            if power(seg) >= SILENCE_POWER:
                seg, _ = random_fit(seg, n, generator)
                if power(seg) >= SILENCE_POWER:
                    return seg, {"noise": "file", "noise_file": name}
            last = f"{name}: silent window"
        raise AudioError(f"NoiseBank {self.name}: {self.MAX_TRIES} silent or unusable noise windows in a row, from "
                         f"{', '.join(sorted(set(names))[:4])} (last: {last})")

    def _babble(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        k = self.n_talkers[0] + R.randint(generator, self.n_talkers[1] - self.n_talkers[0] + 1)
        utts = babble_utterances(self.utterances, k, generator)
        return babble(utts, n, generator), {"noise": "babble", "noise_talkers": len(utts)}


def babble_utterances(source, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Up to k distinct utterances (all of them when there are fewer) from a sequence of tensors or
    a SpeakerReservoir (its `sample_wavs`, distinct speakers)."""
    if hasattr(source, "sample_wavs"):
        utts = source.sample_wavs(k, generator)
    else:
        pool = list(source)
        if not pool:
            raise ValueError("babble: no utterances to build babble from")
        utts = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:k].tolist()]
    if not utts:
        raise ValueError("babble: no utterances to build babble from")
    return utts


def babble(utterances: Sequence[torch.Tensor], n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) sum of the utterances, each cropped/looped at a random offset and set to unit power first
    (silent ones skipped), scaled to unit RMS. Raises ValueError when all are silent."""
    out = torch.zeros(n)
    used = 0
    for i, u in enumerate(utterances):
        seg, _ = random_fit(as_wave(u, f"babble utterance {i}"), n, generator)
        if power(seg) >= SILENCE_POWER:
            out += _unit(seg)
            used += 1
    if used == 0 or power(out) < SILENCE_POWER:
        raise ValueError(f"babble: all {len(utterances)} utterances are silent over the drawn windows")
    return _unit(out)
