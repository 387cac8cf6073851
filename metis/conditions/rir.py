"""Room impulse responses: a statistical simulator, reverberation that keeps the direct path in
place, the Schroeder RT60 estimate, and `RIRBank` (files or simulated)."""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch
import torchaudio.functional as AF

from metis.audio import AudioError
from metis.conditions import _random as R
from metis.conditions.audio_files import FileSource, list_audio
from metis.conditions.signal import as_wave
from metis.data.skips import SkipCounter

DECAY_60DB = 3.0 * math.log(10.0)  # amplitude exp(-DECAY_60DB·t/rt60) falls 60 dB in rt60 seconds


def simulate_rir(rt60: float, generator: torch.Generator, sample_rate: int = 16000, drr_db: float = 5.0,
                 predelay_ms: float = 2.0, n_early: int = 6, length_factor: float = 1.2) -> torch.Tensor:
    """(k,) a synthetic room impulse response (the statistical model of reverberation):

    * a unit direct path after `predelay_ms` (the peak of the response);
    * `n_early` sparse early reflections within 1..50 ms of it, random signs;
    * a diffuse tail: Gaussian noise under an exponential envelope that decays 60 dB in `rt60` s;
    * reflections + tail scaled so that direct / reverberant energy = `drr_db`;
    * length = predelay + length_factor · rt60.
    """
    if not rt60 > 0:
        raise ValueError(f"simulate_rir: rt60 must be > 0 s, got {rt60!r}")
    d = int(round(predelay_ms * 1e-3 * sample_rate))
    k = d + max(int(length_factor * rt60 * sample_rate), 2)
    t = torch.arange(k - d, dtype=torch.float32) / sample_rate  # time after the direct path
    envelope = torch.exp(-DECAY_60DB * t / rt60)
    onset = (t / 0.002).clamp(max=1.0)  # the diffuse field builds up over ~2 ms
    late = torch.randn(k - d, generator=generator) * envelope * onset
    late[0] = 0.0
    early = torch.zeros(k - d)
    lo, hi = int(1e-3 * sample_rate), min(int(50e-3 * sample_rate), k - d - 1)
    if n_early > 0 and hi > lo:
        pos = torch.randint(lo, hi, (n_early,), generator=generator)
        amp = (0.3 + 0.5 * torch.rand(n_early, generator=generator)) * envelope[pos]
        sign = torch.randint(0, 2, (n_early,), generator=generator).float() * 2 - 1
        early.index_add_(0, pos, amp * sign)
    reverb = early + late
    reverb = reverb * math.sqrt(10.0 ** (-drr_db / 10.0) / reverb.pow(2).sum().clamp_min(1e-20))
    peak = float(reverb.abs().max())
    if peak >= 0.95:  # keep the direct path the largest tap (the alignment reference)
        reverb = reverb * (0.95 / peak)
    rir = torch.zeros(k)
    rir[d] = 1.0
    rir[d:] += reverb
    return rir


def reverberate(wav: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """(n,) * (k,) -> (n,): the convolution, aligned so the RIR's peak (the direct path) lands on
    the dry signal's own time (no delay), cut to n samples. The direct path keeps its RIR gain."""
    wav, rir = as_wave(wav, "wav"), as_wave(rir, "rir")
    peak = int(rir.abs().argmax())
    y = AF.fftconvolve(wav, rir)
    return y[peak:peak + wav.shape[0]]


def schroeder_rt60(rir: torch.Tensor, sample_rate: int = 16000, fit_db: tuple[float, float] = (-5.0, -25.0)) -> float:
    """RT60 (s) of `rir` by Schroeder backward integration from its peak: the energy-decay curve in dB,
    a least-squares line between `fit_db` (T20 by default), extrapolated to -60 dB.

    Raises:
        ValueError: the decay curve never reaches the lower fit level.
    """
    h = as_wave(rir, "rir").double()
    h = h[int(h.abs().argmax()):]
    edc = torch.flip(torch.cumsum(torch.flip(h * h, [0]), 0), [0])
    edc_db = 10.0 * torch.log10(edc / edc[0] + 1e-300)
    hi, lo = fit_db
    sel = (edc_db <= hi) & (edc_db >= lo)
    if not bool((edc_db < lo).any()) or int(sel.sum()) < 2:
        raise ValueError(f"schroeder_rt60: the decay curve does not fall from {hi} to {lo} dB")
    t = torch.nonzero(sel).squeeze(1).double() / sample_rate
    y = edc_db[sel]
    slope = float(((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum())
    if slope >= 0:
        raise ValueError("schroeder_rt60: the decay curve does not decay")
    return -60.0 / slope


class RIRBank:
    """Room impulse responses: files (`from_folder`, read on demand, down-mixed to channel 0,
    resampled, peak-normalised) or `simulated` (a fresh `simulate_rir` per draw)."""

    CACHE = 256  # decoded RIR files kept (they are short)
    MAX_TRIES = 8  # files drawn before a bank of bad files is reported

    def __init__(self, *, files: list[str] | None = None, rt60: tuple[float, float] = (0.2, 1.0),
                 drr_db: tuple[float, float] = (0.0, 10.0), sample_rate: int = 16000, name: str = ""):
        self.files = list(files) if files is not None else None
        self.rt60 = R.check_range("rt60", rt60)
        if self.rt60[0] <= 0:
            raise ValueError(f"RIRBank: rt60 range must be positive, got {rt60!r}")
        self.drr_db = R.check_range("drr_db", drr_db)
        self.sample_rate = int(sample_rate)
        self.name = name
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bad: dict[str, AudioError] = {}  # files refused once are not decoded again
        self.skips = SkipCounter()  # draws of bad files left out, by rir_<reason> (warned with the file)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, sample_rate: int = 16000) -> "RIRBank":
        return cls(files=list_audio(path, "RIR"), sample_rate=sample_rate, name=str(path))

    @classmethod
    def simulated(cls, rt60: tuple[float, float] = (0.2, 1.0), drr_db: tuple[float, float] = (0.0, 10.0),
                  sample_rate: int = 16000) -> "RIRBank":
        return cls(rt60=rt60, drr_db=drr_db, sample_rate=sample_rate, name="simulated")

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else 0

    def __repr__(self) -> str:
        what = f"{len(self)} files" if self.files is not None else f"simulated rt60={self.rt60}"
        return f"RIRBank({what}, sample_rate={self.sample_rate})"

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """A RIR (k,) with peak amplitude 1."""
        return self.draw(generator)[0]

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """(rir (k,), info): info["rir"] = "simulated" (+ "rt60", "drr_db") or "file" (+ "rir_file")."""
        if self.files is None:
            rt60 = R.uniform(generator, *self.rt60)
            drr = R.uniform(generator, *self.drr_db)
            return simulate_rir(rt60, generator, self.sample_rate, drr_db=drr), {"rir": "simulated", "rt60": rt60,
                                                                                    "drr_db": drr}
        last = ""
        for _ in range(self.MAX_TRIES):  # a bad file is counted and another drawn (whatever was refused before)
            path = self.files[R.randint(generator, len(self.files))]
            try:
                return self._load(path), {"rir": "file", "rir_file": path}
            except AudioError as exn:
                last = str(exn)
                self.skips.skip(f"rir_{exn.reason}", path, last.removeprefix(f"{path}: "))
        raise AudioError(f"RIRBank {self.name}: {self.MAX_TRIES} unusable RIR files in a row (last: {last})")

    def _load(self, path: str) -> torch.Tensor:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        if path in self._bad:
            bad = self._bad[path]
            raise AudioError(str(bad), bad.reason)
        try:  # metis.audio.check: no NaN, silent, constant or clipped-flat RIR
            rir = FileSource(path).read(self.sample_rate, first_channel=True)
        except AudioError as exn:
            self._bad[path] = exn
            raise
        rir = rir / float(rir.abs().max())
        self._cache[path] = rir
        if len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return rir
