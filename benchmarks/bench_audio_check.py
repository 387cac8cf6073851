"""The audio validity check (`metis.audio.check`) on real audio: what it passes, how far real audio is
from its limits, and what it costs.

    python benchmarks/bench_audio_check.py                                # ../shared/audio + data/demo
    python benchmarks/bench_audio_check.py --folders /data/wavs --shards data/x/shards

Every audio file under --folders and every audio member of the shards under --shards is decoded and
checked. Prints the count checked, those refused by reason (for real recordings: should be none),
the smallest standard deviation and largest fraction of full-scale samples met (how far real audio
is from `MIN_STD` and `MAX_CLIPPED_FRACTION`), and the check's cost per hour of audio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metis import audio  # noqa: E402
from metis.data.shards import TOKENIZER_MEMBER, audio_ext, expand_shards, iter_tar  # noqa: E402


def sources(folders: list[Path], shards: list[Path]):
    """(name, encoded bytes or path) of every audio file and shard member."""
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in audio.AUDIO_SUFFIXES and p.is_file():
                yield str(p), p
    for root in shards:
        for url in expand_shards([str(d) for d in sorted({p.parent for p in root.rglob("*.tar")})]):
            for s in iter_tar(url):
                ext = audio_ext(s)
                if s["__key__"] != TOKENIZER_MEMBER and ext is not None:
                    yield f"{url}:{s['__key__']}", s[ext]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folders", nargs="*", type=Path,
                   default=[ROOT.parent / "shared" / "audio", ROOT / "data" / "demo" / "raw"])
    p.add_argument("--shards", nargs="*", type=Path, default=[ROOT / "data" / "demo" / "shards",
                                                              ROOT / "data" / "demo" / "tokens"])
    args = p.parse_args()
    folders = [f for f in args.folders if f.is_dir()]
    shards = [s for s in args.shards if s.is_dir()]
    print("folders:", ", ".join(map(str, folders)) or "-", "| shards:", ", ".join(map(str, shards)) or "-")
    refused: Counter = Counter()
    n, seconds, check_s = 0, 0.0, 0.0
    lowest_std = (np.inf, "")
    most_clipped = (0.0, "")
    for name, src in sources(folders, shards):
        try:
            wav, sr = audio.read(src, name=name, validate=False)
        except audio.AudioError as exn:
            refused[exn.reason] += 1
            print(f"  refused ({exn.reason}): {exn}")
            continue
        n += 1
        seconds += len(wav) / sr
        t = time.perf_counter()
        try:
            audio.check(wav, name)
        except audio.AudioError as exn:
            refused[exn.reason] += 1
            print(f"  refused ({exn.reason}): {exn}")
        check_s += time.perf_counter() - t
        if wav.size and np.isfinite(wav).all():
            std = float(wav.std(dtype=np.float64))
            clipped = float(np.count_nonzero(np.abs(wav) >= audio.FULL_SCALE)) / wav.size
            lowest_std = min(lowest_std, (std, name))
            most_clipped = max(most_clipped, (clipped, name))
    print(f"checked: {n} ({seconds / 3600:.2f} h of audio); refused: {sum(refused.values())} {dict(refused)}")
    print(f"smallest std: {lowest_std[0]:.3g} ({lowest_std[1]}); MIN_STD = {audio.MIN_STD:g}")
    print(f"largest full-scale fraction: {most_clipped[0]:.3%} ({most_clipped[1]}); "
          f"MAX_CLIPPED_FRACTION = {audio.MAX_CLIPPED_FRACTION:g}")
    if seconds:
        print(f"check cost: {check_s * 1e3:.1f} ms in all, {check_s / seconds * 3600:.2f} s per hour of audio "
              f"({check_s / seconds * 1e6:.1f} us per second of audio)")


if __name__ == "__main__":
    main()
