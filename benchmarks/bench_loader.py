"""Loader throughput and memory on CPU.

    python benchmarks/bench_loader.py                       # generated corpus (or --shards DIR)
    python benchmarks/bench_loader.py --shards data/demo/tokens/train --memory-seconds 120

Prints, for raw-audio shards (decode + resample to 16 and 24 kHz) and for token shards:
samples/s, tokens (50 Hz frames)/s, hours of audio per hour, mean padding; then RSS (main
process + workers) sampled over a long endless (train-mode) stream, which should stay flat.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil  # noqa: I001  (installed with lightning)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metis.data.loader import build_loader  # noqa: E402
from metis.data.shards import ShardWriter, npy_bytes  # noqa: E402


def make_corpus(root: Path, n_shards: int, per_shard: int, seed: int = 0) -> str:
    """Shards of speech-like audio (16 kHz flac) with 50 Hz tokens, log-normal durations (1–20 s)."""
    from metis.audio import encode_flac

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    for s in range(n_shards):
        with ShardWriter(root / f"bench-{s:04d}.tar", tokenizers={"sem": {"name": "bench"}}) as w:
            for i in range(per_shard):
                dur = round(min(20.0, max(1.0, rng.lognormvariate(1.6, 0.5))), 2)
                n = int(dur * 16000)
                t = np.arange(n) / 16000
                wav = 0.2 * np.sin(2 * np.pi * (150 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t) + 0.02 * nrng.standard_normal(n)
                key = f"b{s}_{i}"
                meta = f'{{"id": "{key}", "text": "x", "duration": {dur}, "speaker": "s{i % 7}", "language": "en"}}'
                w.write(key, {"flac": encode_flac(wav, 16000), "json": meta.encode(),
                              "sem.npy": npy_bytes(nrng.integers(0, 8192, int(round(dur * 50))).astype(np.int16))})
    return str(root)


def pss_mb(proc: psutil.Process) -> float:
    """Proportional set size of the process and its workers (shared pages counted once overall)."""
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def throughput(shards: str, fields, workers: int, max_tokens: int, seconds: float, label: str) -> None:
    """Steady-state rate of the endless training stream, timed after the first batch."""
    loader = build_loader(shards, mode="train", fields=fields, max_tokens=max_tokens, num_workers=workers,
                          max_dur=20, min_dur=0.3, seed=0)
    t_start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t_start
    t0 = time.perf_counter()
    n = frames = batches = 0
    secs = pad = 0.0
    for b in it:
        n += len(b["id"])
        frames += b["n_frames"]
        secs += float(b["duration"].sum())
        pad += b["padding_ratio"]
        batches += 1
        if time.perf_counter() - t0 > seconds:
            break
    dt = time.perf_counter() - t0
    print(f"{label:<30} {n / dt:7.1f} samples/s {frames / dt:9.0f} tokens/s {secs / dt:7.0f} h audio/h "
          f"{batches / dt:6.2f} batches/s (pad {pad / max(batches, 1):.1%}, first batch {first:.2f}s)")


def memory(shards: str, fields, workers: int, max_tokens: int, seconds: float, label: str) -> None:
    loader = build_loader(shards, mode="train", fields=fields, max_tokens=max_tokens, num_workers=workers, max_dur=20,
                          min_dur=0.3, seed=0)
    proc = psutil.Process()
    t0 = time.perf_counter()
    marks, n, nxt = [], 0, 0.0
    for b in loader:
        n += len(b["id"])
        el = time.perf_counter() - t0
        if el >= nxt:
            marks.append((el, pss_mb(proc)))
            nxt += seconds / 12
        if el > seconds:
            break
    print(f"{label}: PSS (main + {workers} workers) over a {seconds:.0f}s endless stream ({n} samples, "
          f"{n / (el or 1):.0f}/s):")
    print("   " + "  ".join(f"{t:4.0f}s:{m:5.0f}MB" for t, m in marks))
    mid = [m for t, m in marks if seconds / 3 <= t < 2 * seconds / 3]
    end = [m for t, m in marks if t >= 2 * seconds / 3]
    print(f"   max over the middle third {max(mid):.0f} MB, over the last third {max(end):.0f} MB "
          f"(growth {max(end) - max(mid):+.0f} MB)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shards", default=None, help="shard dir/pattern with audio + sem.npy (default: generated)")
    p.add_argument("--n-shards", type=int, default=6)
    p.add_argument("--per-shard", type=int, default=80)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=15.0, help="timing window per throughput case")
    p.add_argument("--memory-seconds", type=float, default=90.0)
    args = p.parse_args()
    print(f"torch threads={__import__('torch').get_num_threads()}, cpus={os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if shards is None:
            t = time.perf_counter()
            shards = make_corpus(Path(tmp), args.n_shards, args.per_shard)
            print(f"generated {args.n_shards}×{args.per_shard} samples in {time.perf_counter() - t:.1f}s")
        w, mt = args.workers, args.max_tokens
        throughput(shards, ("sem",), w, mt, args.seconds, "token shards (sem)")
        throughput(shards, ("wav16",), w, mt, args.seconds, "raw audio -> wav16")
        throughput(shards, ("sem", "wav16", "wav24"), w, mt, args.seconds, "raw audio -> sem+wav16+wav24")
        memory(shards, ("sem",), w, mt, args.memory_seconds, "token shards")
        memory(shards, ("sem", "wav16", "wav24"), w, mt, args.memory_seconds, "raw audio")


if __name__ == "__main__":
    main()
