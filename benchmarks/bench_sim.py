"""Does a speaker-similarity model tell same speaker, another speaker and noise apart on real speech?

    python benchmarks/bench_sim.py                       # resemblyzer (the offline fallback)
    python benchmarks/bench_sim.py --wavlm-model PATH    # also WavLM (UniSpeech .pth or a WavLMForXVector folder)

Pairs from the real recordings in ../shared/audio (single-speaker clips only; the mixture and the noisy
clip are left out):
    same      the two halves of one recording (every clip of at least 3 s)
    different halves of two recordings of which one at least is a LibriTTS clip: the four LibriTTS clips
              are four speakers; the Amphion prompts' speakers are not documented (two of them may
              be one person), so pairs of two Amphion prompts are left out
    noise     a half against white noise, pink noise, and speech-shaped noise (the spectrum of the half
              with random phase) of the same length and level
Prints per model the mean / min / max of each group and whether the groups separate: min(same) >
max(different) and min(different) > max(noise) ("separates" = both margins positive).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from metis.audio import Audio, load
from metis.eval.metrics import ResemblyzerSim, WavLMSim

SKIP = ("metis_tse_mix", "metis_se_noise")  # two speakers / noisy: not one clean speaker


def clips(folder: Path, min_s: float = 3.0) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(folder.glob("*.wav")):
        if p.stem in SKIP:
            continue
        x = load(p, 16000).samples
        if len(x) >= min_s * 16000:
            out[p.stem] = x
    return out


def noises(x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rms = np.sqrt(np.mean(x ** 2)) + 1e-9
    white = rng.standard_normal(len(x))
    f = np.fft.rfftfreq(len(x))
    pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(len(x))) / np.sqrt(np.maximum(f, f[1])), len(x))
    shaped = np.fft.irfft(np.abs(np.fft.rfft(x)) * np.exp(2j * np.pi * rng.random(len(f))), len(x))
    return {k: (v / (np.sqrt(np.mean(v ** 2)) + 1e-9) * rms).astype(np.float32)
            for k, v in {"white": white, "pink": pink, "speech_shaped": shaped}.items()}


def measure(metric, data: dict[str, np.ndarray], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    halves = {k: (x[: len(x) // 2], x[len(x) // 2:]) for k, x in data.items()}
    sim = lambda a, b: metric.similarity(Audio(a, 16000), Audio(b, 16000))  # noqa: E731
    groups = {"same": [sim(a, b) for a, b in halves.values()],
              "different": [sim(halves[i][0], halves[j][1]) for i, j in itertools.permutations(halves, 2)
                            if i.startswith("libritts") or j.startswith("libritts")],
              "noise": [sim(a, n) for a, _ in halves.values() for n in noises(a, rng).values()]}
    stats = {g: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}
             for g, v in groups.items()}
    stats["margin_same_vs_different"] = stats["same"]["min"] - stats["different"]["max"]
    stats["margin_different_vs_noise"] = stats["different"]["min"] - stats["noise"]["max"]
    stats["separates"] = stats["margin_same_vs_different"] > 0 and stats["margin_different_vs_noise"] > 0
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "audio"))
    p.add_argument("--wavlm-model", default=None)
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    data = clips(Path(args.audio))
    if len(data) < 2:
        raise SystemExit(f"{args.audio}: fewer than two usable recordings")
    metrics = {"sim_resemblyzer": ResemblyzerSim()}
    if args.wavlm_model:
        metrics["sim_wavlm"] = WavLMSim(args.wavlm_model)
    out = {}
    print(f"{len(data)} recordings: {', '.join(data)}")
    for name, m in metrics.items():
        m.check()
        s = out[name] = measure(m, data)
        print(f"{name}: " + "  ".join(f"{g} {s[g]['mean']:.3f} [{s[g]['min']:.3f}, {s[g]['max']:.3f}] (n={s[g]['n']})"
                                      for g in ("same", "different", "noise")))
        print(f"  margins: same-different {s['margin_same_vs_different']:+.3f}, different-noise "
              f"{s['margin_different_vs_noise']:+.3f} -> {'separates' if s['separates'] else 'DOES NOT separate'}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
