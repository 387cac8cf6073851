"""Audio on disk -> shards: `python -m metis.data prepare`.

Inputs (auto-detected, or `layout=`):
    folder       any tree of audio files; a transcript `.txt`/`.lab` beside a file is its text; the
                 speaker is the parent folder's name
    manifest     .jsonl (one object per line) or .csv/.tsv with a header; columns `path` (relative to
                 the manifest) and optional `text`, `speaker`, `language`, `id`
    libritts     {spk}/{chapter}/{spk}_{chapter}_{...}.wav + .normalized.txt (or .original.txt)
    librispeech  {spk}/{chapter}/{spk}-{chapter}-{utt}.flac + {spk}-{chapter}.trans.txt

Each file is decoded, down-mixed to mono, resampled (`sample_rate`; default: keep the file's rate up
to 24 kHz, so the 24 kHz acoustic path loses nothing), split at low-energy points when longer than
`max_dur` (split pieces get an empty text: the transcript no longer aligns), filtered by duration and
written as 16-bit flac + json. Files are visited in a seeded random order and pieces pass a shuffle
buffer, so shards mix speakers and sources. A shard closes at `max_count` samples or `max_bytes`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from metis import audio
from metis.atomic import write_json
from metis.data.shards import ShardSink
from metis.data.skips import SkipCounter

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass
class Source:
    path: str
    id: str
    text: str = ""
    speaker: str = ""
    language: str = "en"
    extra: dict = field(default_factory=dict)


def _key(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", s)


def _read_text(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8", errors="replace").split())


def discover_folder(root: Path, language: str) -> list[Source]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in AUDIO_SUFFIXES or not p.is_file():
            continue
        text = ""
        for ext in (".txt", ".lab"):
            if p.with_suffix(ext).exists():
                text = _read_text(p.with_suffix(ext))
                break
        rel = p.relative_to(root)
        speaker = p.parent.name if p.parent != root else "unknown"
        out.append(Source(str(p), _key(str(rel.with_suffix(""))), text, speaker, language))
    return out


def discover_libritts(root: Path, language: str) -> list[Source]:
    out = []
    for p in sorted(root.rglob("*.wav")):
        text = ""
        for ext in (".normalized.txt", ".original.txt"):
            t = p.with_name(p.stem + ext)
            if t.exists():
                text = _read_text(t)
                break
        out.append(Source(str(p), _key(p.stem), text, p.stem.split("_")[0], language))
    return out


def discover_librispeech(root: Path, language: str) -> list[Source]:
    out = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            uid, _, text = line.partition(" ")
            p = trans.parent / f"{uid}.flac"
            if p.exists():
                out.append(Source(str(p), _key(uid), text.strip(), uid.split("-")[0], language))
    return out


def discover_manifest(path: Path, language: str) -> list[Source]:
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exn:
                    raise ValueError(f"{path}:{i}: invalid json ({exn})") from None
    elif path.suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise ValueError(f"manifest {path}: expected .jsonl, .csv or .tsv")
    out = []
    for i, r in enumerate(rows, 1):
        if not r.get("path"):
            raise ValueError(f"manifest {path}, row {i}: missing field 'path'")
        p = Path(r["path"])
        p = p if p.is_absolute() else path.parent / p
        known = {"path", "id", "text", "speaker", "language"}
        out.append(Source(str(p), _key(r.get("id") or p.stem), r.get("text", "") or "",
                          r.get("speaker", "") or "unknown", r.get("language") or language,
                          {k: v for k, v in r.items() if k not in known}))
    return out


def discover(input: str | os.PathLike, layout: str = "auto", language: str = "en") -> tuple[str, list[Source]]:
    """-> (layout used, sources). Raises ValueError when nothing usable is found."""
    root = Path(input)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    if layout == "auto":
        if root.is_file():
            layout = "manifest"
        elif next(root.rglob("*.trans.txt"), None) is not None:
            layout = "librispeech"
        elif next(root.rglob("*.normalized.txt"), None) is not None:
            layout = "libritts"
        else:
            layout = "folder"
    finder = {"folder": discover_folder, "libritts": discover_libritts,
              "librispeech": discover_librispeech, "manifest": discover_manifest}.get(layout)
    if finder is None:
        raise ValueError(f"unknown layout {layout!r}")
    sources = finder(root, language)
    if not sources:
        raise ValueError(f"no audio found in {root} (layout {layout})")
    return layout, sources


def split_points(wav: np.ndarray, sr: int, max_dur: float) -> list[tuple[int, int]]:
    """Cut a long waveform into pieces ≤ max_dur, each cut at the quietest 20 ms frame of the last
    40% of the allowed span."""
    n, max_len, hop = len(wav), int(max_dur * sr), max(1, sr // 50)
    pieces, start = [], 0
    while n - start > max_len:
        lo, hi = start + int(0.6 * max_len), start + max_len
        seg = wav[lo:hi]
        m = len(seg) // hop
        energy = (seg[: m * hop].reshape(m, hop) ** 2).mean(1)
        cut = lo + int(np.argmin(energy)) * hop + hop // 2
        pieces.append((start, cut))
        start = cut
    pieces.append((start, n))
    return pieces


def process(src: Source, sample_rate: int | None, min_dur: float, max_dur: float, min_std: float = audio.MIN_STD,
            max_clipped_fraction: float = audio.MAX_CLIPPED_FRACTION
            ) -> tuple[list[tuple[str, dict[str, bytes], float, str]], list[tuple[str, str, str]]]:
    """One source file -> ([(key, members, seconds, speaker)], [(reason, file, detail) of each piece
    left out]). The file and each piece pass `metis.audio.check` (with `min_std`, `max_clipped_fraction`),
    as the loader will check them."""
    limits = dict(min_std=min_std, max_clipped_fraction=max_clipped_fraction)
    rejected: list[tuple[str, str, str]] = []
    try:
        wav, sr = audio.read(src.path, validate=False)
        audio.check(wav, src.path, **limits)
    except audio.AudioError as exn:
        return [], [(exn.reason, src.path, str(exn).removeprefix(f"{src.path}: "))]
    except OSError as exn:
        return [], [("unreadable_file", src.path, f"{type(exn).__name__}: {exn}")]
    rate = sample_rate or min(sr, 24000)
    if rate != sr:
        wav = audio.resample(wav, sr, rate)
    pieces = split_points(wav, rate, max_dur) if len(wav) > max_dur * rate else [(0, len(wav))]
    out = []
    for i, (a, b) in enumerate(pieces):
        dur = (b - a) / rate
        where = src.path if len(pieces) == 1 else f"{src.path} [{a / rate:.2f}s, {b / rate:.2f}s]"
        if dur < min_dur:
            rejected.append(("too_short", where, f"{dur:.2f}s < min_dur {min_dur}"))
            continue
        seg = wav[a:b]
        try:
            audio.check(seg, where, **limits)
        except audio.AudioError as exn:
            rejected.append((exn.reason, where, str(exn).removeprefix(f"{where}: ")))
            continue
        key = src.id if len(pieces) == 1 else f"{src.id}_seg{i:03d}"
        meta = {"id": key, "text": src.text if len(pieces) == 1 else "", "duration": round(dur, 4),
                "speaker": src.speaker, "language": src.language, "source": src.path, "sample_rate": rate,
                **src.extra}
        if len(pieces) > 1:
            meta["segment"] = [round(a / rate, 4), round(b / rate, 4)]
        out.append((key, {"flac": audio.encode_flac(seg, rate), "json": json.dumps(meta).encode()}, dur, src.speaker))
    return out, rejected


def _process_star(args):
    return process(*args)


def write_shards(sources: list[Source], out_dir: str | os.PathLike, *, sample_rate: int | None = None,
                 min_dur: float = 0.5, max_dur: float = 30.0, max_count: int = 1000, max_bytes: int = 1 << 30,
                 seed: int = 0, workers: int = 1, prefix: str = "shard", shuffle_buffer: int = 512,
                 min_std: float = audio.MIN_STD, max_clipped_fraction: float = audio.MAX_CLIPPED_FRACTION,
                 progress: bool = True, desc: str = "prepare") -> dict:
    """Sources -> shards in out_dir (see module docstring). Returns the summary (also written to
    `{out_dir}/prepare.json`)."""
    from tqdm import tqdm

    rng = random.Random(seed)
    order = list(sources)
    rng.shuffle(order)
    sink = ShardSink(out_dir, prefix=prefix, max_count=max_count, max_bytes=max_bytes)
    skips = SkipCounter()
    speakers: Counter = Counter()
    seconds = 0.0
    buf: list[tuple[str, dict]] = []
    keys: set[str] = set()
    jobs = [(s, sample_rate, min_dur, max_dur, min_std, max_clipped_fraction) for s in order]

    def results() -> Iterator:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                yield from pool.imap(_process_star, jobs, chunksize=4)
        else:
            yield from map(_process_star, jobs)

    try:
        for pieces, rejected in tqdm(results(), total=len(jobs), desc=desc, unit="file", disable=not progress):
            for reason, where, detail in rejected:
                skips.skip(reason, where, detail)
            for key, members, dur, spk in pieces:
                if key in keys:
                    skips.skip("duplicate_id", key, "another file already gave this id")
                    continue
                keys.add(key)
                seconds += dur
                speakers[spk] += 1
                buf.append((key, members))
                if len(buf) >= shuffle_buffer:
                    sink.write(*buf.pop(rng.randrange(len(buf))))
        rng.shuffle(buf)
        for item in buf:
            sink.write(*item)
        paths = sink.close()
    except BaseException:
        sink.abort()
        raise
    summary = {"out_dir": str(out_dir), "files": len(sources), "samples": sink.samples,
               "hours": round(seconds / 3600, 4), "speakers": len(speakers), "shards": len(paths),
               "shard_names": [p.name for p in paths], "skipped": skips.as_dict()}
    write_json(Path(out_dir) / "prepare.json", summary)
    return summary


def prepare(input: str | os.PathLike, out_dir: str | os.PathLike, *, layout: str = "auto",
            language: str = "en", overwrite: bool = False, **kw) -> dict:
    """Discover sources under `input`, write shards; skipped when `{out_dir}/prepare.json` exists
    (pass overwrite=True to redo)."""
    done = Path(out_dir) / "prepare.json"
    if done.exists() and not overwrite:
        summary = json.loads(done.read_text())
        summary["already_done"] = True
        return summary
    layout, sources = discover(input, layout, language)
    summary = write_shards(sources, out_dir, **kw)
    summary["layout"] = layout
    write_json(done, summary)
    return summary
