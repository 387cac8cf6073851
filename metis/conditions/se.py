"""Speech-enhancement degradation: clean speech -> (reverberant) noisy, band-limited, clipped speech.

Chain (each step drawn independently): reverb (p_reverb) -> additive noise at a drawn SNR (p_noise)
-> band-limiting to a drawn cutoff (p_bandlimit) -> clipping at a drawn level below the peak (p_clip).
The SNR is measured against the (possibly reverberant) speech, the usual convention
(DNS Challenge); the SE target stays the dry clean utterance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metis.conditions import _random as R
from metis.conditions.distortions import band_limit, clip, peak_threshold
from metis.conditions.noise import NoiseBank, babble, babble_utterances
from metis.conditions.rir import RIRBank, reverberate
from metis.conditions.signal import SILENCE_POWER, as_wave, gain_for_snr, power


class SEDegrader:
    """Draws one degradation per call; every draw comes from the passed generator.

    Args:
        noise: noise files/shards/coloured bank; None: babble from `others` / `babble_source` when
            available, else coloured (white/pink/brown) noise.
        rirs: RIR bank; None: reverb is never applied (p_reverb ignored).
        snr_db: (lo, hi) uniform SNR range in dB.
        p_noise, p_reverb, p_clip, p_bandlimit: probabilities of each step.
        clip_db: (lo, hi) uniform clipping level in dB relative to the signal's peak (<= 0).
        cutoffs_hz: band-limit cutoffs, one drawn uniformly; each < sample_rate / 2.
        babble_source: utterances (sequence of (n,) tensors or a SpeakerReservoir) for babble.
        p_babble: with a noise bank given, probability of babble instead (when babble is available).
        n_talkers: (lo, hi) talkers in babble.
    """

    def __init__(self, noise: NoiseBank | None = None, rirs: RIRBank | None = None,
                 snr_db: tuple[float, float] = (-5.0, 20.0), p_noise: float = 1.0, p_reverb: float = 0.3,
                 p_clip: float = 0.1, clip_db: tuple[float, float] = (-20.0, -3.0), p_bandlimit: float = 0.1,
                 cutoffs_hz: Sequence[float] = (2000, 4000, 6000), sample_rate: int = 16000,
                 babble_source=None, p_babble: float = 0.0, n_talkers: tuple[int, int] = (3, 6)):
        self.noise, self.rirs = noise, rirs
        self.snr_db = R.check_range("snr_db", snr_db)
        self.p_noise = R.check_prob("p_noise", p_noise)
        self.p_reverb = R.check_prob("p_reverb", p_reverb)
        self.p_clip = R.check_prob("p_clip", p_clip)
        self.p_bandlimit = R.check_prob("p_bandlimit", p_bandlimit)
        self.p_babble = R.check_prob("p_babble", p_babble)
        self.clip_db = R.check_range("clip_db", clip_db)
        if self.clip_db[1] > 0:
            raise ValueError(f"clip_db must be <= 0 dB (relative to the peak), got {clip_db!r}")
        self.sample_rate = int(sample_rate)
        self.cutoffs_hz = tuple(float(c) for c in cutoffs_hz)
        if self.p_bandlimit > 0 and not self.cutoffs_hz:
            raise ValueError("cutoffs_hz is empty while p_bandlimit > 0")
        for c in self.cutoffs_hz:
            if not 0 < c < self.sample_rate / 2:
                raise ValueError(f"cutoffs_hz: {c:g} Hz is not in (0, {self.sample_rate / 2:g}) Hz "
                                 f"(the Nyquist band at sample_rate={self.sample_rate})")
        for name, bank in (("noise", noise), ("rirs", rirs)):
            if bank is not None and bank.sample_rate != self.sample_rate:
                raise ValueError(f"{name} bank is at {bank.sample_rate} Hz, the degrader at {self.sample_rate} Hz")
        self.babble_source = babble_source
        self.n_talkers = n_talkers
        self._coloured = NoiseBank.coloured(sample_rate=self.sample_rate)

    def banks(self) -> list:
        """The file banks drawn from (their `skips` count the files the audio check refused)."""
        return [b for b in (self.noise, self.rirs) if b is not None]

    def __call__(self, clean: torch.Tensor, generator: torch.Generator,
                 others: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
        """clean (n,) -> (degraded (n,), info).

        info: reverb (bool), snr_db (float | None), noise (str | None: "file", "coloured", "babble")
        + its details, cutoff_hz (float | None), clip_threshold (float | None), and the RIR's
        details when reverberated.

        Raises:
            ValueError: empty, non-finite or silent `clean`.
        """
        x = as_wave(clean, "clean")
        if power(x) < SILENCE_POWER:
            raise ValueError("SEDegrader: clean speech is silent (no SNR can be set against it)")
        n = x.shape[0]
        do_reverb = R.bernoulli(generator, self.p_reverb) and self.rirs is not None
        do_noise = R.bernoulli(generator, self.p_noise)
        do_band = R.bernoulli(generator, self.p_bandlimit)
        do_clip = R.bernoulli(generator, self.p_clip)
        info: dict = {"reverb": do_reverb, "snr_db": None, "noise": None, "cutoff_hz": None, "clip_threshold": None}
        if do_reverb:
            rir, rinfo = self.rirs.draw(generator)
            x = reverberate(x, rir)
            info.update(rinfo)
        if do_noise:
            snr = R.uniform(generator, *self.snr_db)
            noise, ninfo = self._noise(n, generator, others)
            x = x + gain_for_snr(x, noise, snr) * noise
            info.update(ninfo, snr_db=snr)
        if do_band:
            cutoff = self.cutoffs_hz[R.randint(generator, len(self.cutoffs_hz))]
            x = band_limit(x, cutoff, self.sample_rate)
            info["cutoff_hz"] = cutoff
        if do_clip:
            level = R.uniform(generator, *self.clip_db)
            threshold = peak_threshold(x, level)
            x = clip(x, threshold)
            info.update(clip_db=level, clip_threshold=threshold)
        return x, info

    def _noise(self, n: int, generator: torch.Generator, others) -> tuple[torch.Tensor, dict]:
        source = others if others else self.babble_source
        use_babble = source is not None and (self.noise is None or R.bernoulli(generator, self.p_babble))
        if use_babble:
            lo, hi = self.n_talkers
            k = lo + R.randint(generator, hi - lo + 1)
            utts = babble_utterances(source, k, generator)
            if utts:
                return babble(utts, n, generator), {"noise": "babble", "noise_talkers": len(utts)}
        bank = self.noise if self.noise is not None else self._coloured
        return bank.draw(n, generator)
