"""Target-speaker-extraction mixtures by dynamic mixing: target + interferer(s) at a drawn SIR,
optionally + background noise at a drawn SNR (both relative to the target)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metis.conditions import _random as R
from metis.conditions.noise import NoiseBank
from metis.conditions.signal import SILENCE_POWER, as_wave, gain_for_snr, power, random_fit


class TSEMixer:
    """Args:
        sir_db: (lo, hi) uniform signal-to-interference ratio in dB (target vs the interferers' sum).
        noise: background noise bank (used with probability p_noise); None: coloured noise.
        snr_db: (lo, hi) uniform SNR of the background noise w.r.t. the target.
        p_noise: probability of adding background noise.
    """

    def __init__(self, sir_db: tuple[float, float] = (-5.0, 5.0), noise: NoiseBank | None = None,
                 snr_db: tuple[float, float] = (5.0, 20.0), p_noise: float = 0.0, sample_rate: int = 16000):
        self.sir_db = R.check_range("sir_db", sir_db)
        self.snr_db = R.check_range("snr_db", snr_db)
        self.p_noise = R.check_prob("p_noise", p_noise)
        self.sample_rate = int(sample_rate)
        if noise is not None and noise.sample_rate != self.sample_rate:
            raise ValueError(f"noise bank is at {noise.sample_rate} Hz, the mixer at {self.sample_rate} Hz")
        self.noise = noise if noise is not None else NoiseBank.coloured(sample_rate=self.sample_rate)

    def banks(self) -> list:
        """The background noise bank (its `skips` count the files the audio check refused)."""
        return [self.noise]

    def __call__(self, target: torch.Tensor, interferer: torch.Tensor | Sequence[torch.Tensor],
                 generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """target (n,), interferer (m,) (or a list of them) -> (mixture (n,), info).

        Each interferer is cropped (m > n) or looped (m < n) from a random offset to n samples; several
        are set to equal power and summed; the sum is scaled to the drawn SIR.
        info: sir_db, interferer_offsets, n_interferers, snr_db (None without noise) + noise details.

        Raises:
            ValueError: empty/non-finite input, silent target or interferer(s).
        """
        t = as_wave(target, "target")
        if power(t) < SILENCE_POWER:
            raise ValueError("TSEMixer: target is silent (no SIR can be set against it)")
        n = t.shape[0]
        items = [interferer] if isinstance(interferer, torch.Tensor) else list(interferer)
        if not items:
            raise ValueError("TSEMixer: no interferer given")
        sir = R.uniform(generator, *self.sir_db)
        inter = torch.zeros(n)
        offsets = []
        for i, it in enumerate(items):
            seg, off = random_fit(as_wave(it, f"interferer {i}"), n, generator)
            p = power(seg)
            if p < SILENCE_POWER:
                raise ValueError(f"TSEMixer: interferer {i} is silent over the drawn window (offset {off})")
            inter += seg / p ** 0.5
            offsets.append(off)
        mixture = t + gain_for_snr(t, inter, sir) * inter
        info: dict = {"sir_db": sir, "interferer_offsets": offsets, "n_interferers": len(items), "snr_db": None}
        if R.bernoulli(generator, self.p_noise):
            snr = R.uniform(generator, *self.snr_db)
            noise, ninfo = self.noise.draw(n, generator)
            mixture = mixture + gain_for_snr(t, noise, snr) * noise
            info.update(ninfo, snr_db=snr)
        return mixture, info
