"""CPU cost of the condition simulators: seconds of compute per minute of 16 kHz audio.

    python benchmarks/bench_conditions.py [--seconds 60] [--repeats 3] [--threads 1]

Each simulator runs on `--seconds` of speech-like audio (a syllable-modulated harmonic signal, or a
LibriTTS clip from ../shared/audio looped when present); the median over `--repeats` seeded calls is
scaled to one minute. One thread by default: the simulators run inside data-loader workers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metis.audio import load_tensor, save
from metis.conditions import (NoiseBank, RIRBank, SEDegrader, TSEMixer, VCPerturber, band_limit, clip, mix_at_snr,
                              reverberate, simulate_rir, upsample_visual)

SR = 16000
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


def speech(seconds: float, seed: int) -> torch.Tensor:
    files = sorted(SHARED.glob("libritts_*.wav"))
    n = int(seconds * SR)
    if len(files) > seed:
        x = load_tensor(files[seed], SR)
        return x.repeat(math.ceil(n / len(x)))[:n]
    t = torch.arange(n) / SR
    f0 = 110.0 + 20 * seed
    x = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, int(7000 / f0)))
    return 0.3 * x * (0.1 + torch.sin(2 * math.pi * 3.5 * t).clamp_min(0))


def bench(fn, repeats: int) -> float:
    times = []
    for r in range(repeats + 1):  # the first call warms up (FFT plans, resampling kernels)
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        fn(g)
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, other = speech(args.seconds, 0), speech(args.seconds, 1)
    n = x.shape[0]
    scale = 60.0 / args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(4):  # 30 s noise files at 48 kHz: read a window + resample on each draw
            save(f"{tmp}/noise{i}.flac", 0.1 * rng.standard_normal(48000 * 30), 48000)
        folder = NoiseBank.from_folder(tmp)
        rir = simulate_rir(0.6, torch.Generator().manual_seed(0), SR)
        vis = torch.randn(int(args.seconds * 25), 768)
        cases = {
            "mix_at_snr (white noise)": lambda g: mix_at_snr(x, torch.randn(n, generator=g), 5.0),
            "NoiseBank.coloured sample": lambda g: NoiseBank.coloured().sample(n, g),
            "NoiseBank.from_folder sample (48 kHz flac)": lambda g: folder.sample(n, g),
            "NoiseBank.babble sample (3-6 talkers)": lambda g: NoiseBank.babble([x, other, x.flip(0), other.flip(0)])
            .sample(n, g),
            "reverberate (rt60 0.6 RIR)": lambda g: reverberate(x, rir),
            "band_limit (4 kHz)": lambda g: band_limit(x, 4000, SR),
            "clip": lambda g: clip(x, 0.1),
            "SEDegrader default (noise; p reverb .3, clip .1, band .1)": lambda g: SEDegrader(
                rirs=RIRBank.simulated())(x, g),
            "SEDegrader every step (reverb+noise+band+clip)": lambda g: SEDegrader(
                rirs=RIRBank.simulated(), p_reverb=1, p_clip=1, p_bandlimit=1)(x, g),
            "TSEMixer (1 interferer)": lambda g: TSEMixer()(x, other, g),
            "TSEMixer (+ background noise)": lambda g: TSEMixer(p_noise=1.0)(x, other, g),
            "VCPerturber (formant + pitch)": lambda g: VCPerturber()(x, g),
            "VCPerturber formant only": lambda g: VCPerturber(pitch_shift_semitones=(0, 0))(x, g),
            "upsample_visual (25 fps, 768-d)": lambda g: upsample_visual(vis, 100),
        }
        print(f"torch {torch.__version__}, {args.threads} thread(s), {args.seconds:g} s of audio per call, "
              f"median of {args.repeats}")
        print(f"{'simulator':60s} {'s / min audio':>14s} {'x real time':>12s}")
        for name, fn in cases.items():
            t = bench(fn, args.repeats) * scale
            print(f"{name:60s} {t:14.4f} {60.0 / t:12.0f}")
        t = bench(lambda g: RIRBank.simulated().sample(g), args.repeats)
        print(f"{'simulate_rir, rt60 0.2-1.0 (seconds per RIR, any audio length)':60s} {t:14.4f}")


if __name__ == "__main__":
    main()
