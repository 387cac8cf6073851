"""Shards -> token shards: `python -m metis.data tokenize`.

Each input shard `X.tar` becomes `{out_dir}/X.tar` holding every sample of X (its audio too unless
`keep_audio=False`) plus `{key}.sem.npy` (int16 (t,)) and, when an acoustic tokenizer is given,
`{key}.ac.npy` (int16 (12, t)), and a first member `__tokenizer__.json` with both identities.
Only samples that pass the loader's own check are tokenized (`metis.data.validate.SampleRules`: json,
duration limits, audio validity, duration vs the decoded audio); every other one is counted under its
reason with its shard and key, and left out of the output.
Samples are encoded in batches of about `batch_seconds` of audio. Output shards are written
atomically, so after an interruption the finished ones are kept and skipped (resume); an existing
output made by a *different* tokenizer is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from metis import audio
from metis.atomic import write_json
from metis.data.shards import ShardWriter, expand_shards, iter_tar, npy_bytes, read_tokenizers
from metis.data.skips import SHARD_ERROR, SkipCounter
from metis.data.validate import SampleRules, checked_samples

TOKEN_MEMBERS = ("sem.npy", "ac.npy")


class TokenizerMismatch(RuntimeError):
    pass


def identities(tokenizer, acoustic=None) -> dict[str, dict]:
    ids = {"sem": dict(tokenizer.identity())}
    if acoustic is not None:
        ids["ac"] = dict(acoustic.identity())
    return ids


def _check_out_dir(out_dir: Path, ids: dict) -> None:
    marker = out_dir / "tokenizer.json"
    if marker.exists():
        have = json.loads(marker.read_text())
        if have != ids:
            raise TokenizerMismatch(f"{out_dir} holds token shards made by {have}; the configured tokenizer is "
                                    f"{ids}. Refusing to mix them: use another output directory.")
        return
    write_json(marker, ids, sort_keys=True)


def _encode(tok, wavs: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
    inputs = [audio.resample(torch.from_numpy(w), sr, tok.sample_rate) for w, sr in wavs]
    codes = tok.encode(inputs)
    if len(codes) != len(inputs):
        raise RuntimeError(f"{type(tok).__name__}.encode returned {len(codes)} outputs for {len(inputs)} inputs")
    out = []
    for c in codes:
        c = torch.as_tensor(c).detach().cpu()
        if c.numel() and (c.min() < 0 or c.max() > np.iinfo(np.int16).max):
            raise RuntimeError(f"{type(tok).__name__} produced codes outside int16 range")
        out.append(c.numpy().astype(np.int16))
    return out


def tokenize_shard(src: str, dst: Path, tokenizer, acoustic=None, *, keep_audio: bool = True,
                   batch_seconds: float = 200.0, rules: SampleRules = SampleRules(),
                   skips: SkipCounter | None = None) -> dict:
    """One shard -> one token shard (atomic) of the samples that pass `rules`; the others are counted
    in `skips`. Returns {samples, seconds, frames}."""
    skips = skips if skips is not None else SkipCounter()
    ids = identities(tokenizer, acoustic)
    stats = Counter()
    pending: list[tuple[dict, np.ndarray, int]] = []

    def flush(w: ShardWriter) -> None:
        if not pending:
            return
        wavs = [(wav, sr) for _, wav, sr in pending]
        sem = _encode(tokenizer, wavs)
        ac = _encode(acoustic, wavs) if acoustic is not None else None
        for i, (sample, wav, sr) in enumerate(pending):
            members = {ext: data for ext, data in sample.items()
                       if not ext.startswith("__") and ext not in TOKEN_MEMBERS and (keep_audio or ext in ("json", "vis.npy"))}
            members["sem.npy"] = npy_bytes(sem[i])
            if ac is not None:
                a = ac[i]
                members["ac.npy"] = npy_bytes(a.T if a.ndim == 2 and a.shape[-1] == 12 else a)  # store (12, t)
            w.write(sample["__key__"], members)
            stats["samples"] += 1
            stats["seconds"] += len(wav) / sr
            stats["frames"] += len(sem[i])
        pending.clear()

    with ShardWriter(dst, tokenizers=ids) as w:
        def handler(exn):
            skips.skip(SHARD_ERROR, src, f"{type(exn).__name__}: {exn} (the rest of the shard is lost)")
            return True

        secs = 0.0
        for sample, _, wav, sr in checked_samples(iter_tar(src, handler=handler), rules, skips):
            pending.append((sample, wav, sr))
            secs += len(wav) / sr
            if secs >= batch_seconds:
                flush(w)
                secs = 0.0
        flush(w)
    return dict(stats)


def tokenize(shards: str | Sequence[str], out_dir: str | os.PathLike, tokenizer, acoustic=None, *,
             keep_audio: bool = True, batch_seconds: float = 200.0, part: int = 0, num_parts: int = 1,
             rules: SampleRules = SampleRules(), progress: bool = True) -> dict:
    """Tokenize every shard (or this job's part: shards part, part+num_parts, ...) into out_dir,
    leaving out (and counting, in the summary's `skipped`) each sample that fails `rules`.

    Resumable: an output shard that exists is finished (atomic writes) and is not redone.

    Raises:
        TokenizerMismatch: out_dir (or one of its shards) was made by another tokenizer.
    """
    from tqdm import tqdm

    urls = expand_shards(shards)[part::num_parts]
    out = Path(out_dir)
    ids = identities(tokenizer, acoustic)
    _check_out_dir(out, ids)
    skips = SkipCounter()
    total = Counter()
    done = redone = 0
    t0 = time.time()
    for url in tqdm(urls, desc="tokenize", unit="shard", disable=not progress):
        dst = out / Path(url.split("::")[0]).name
        if dst.exists():
            have = read_tokenizers(str(dst))
            if have != ids:
                raise TokenizerMismatch(f"{dst} was made by {have}, configured {ids}: refusing to mix")
            done += 1
            continue
        total.update(tokenize_shard(url, dst, tokenizer, acoustic, keep_audio=keep_audio,
                                    batch_seconds=batch_seconds, rules=rules, skips=skips))
        redone += 1
    elapsed = time.time() - t0
    return {"out_dir": str(out), "shards": len(urls), "tokenized": redone, "already_done": done,
            "samples": total["samples"], "hours": round(total["seconds"] / 3600, 4),
            "frames": total["frames"], "elapsed_s": round(elapsed, 2),
            "realtime_factor": round(total["seconds"] / elapsed, 1) if elapsed > 0 and total["seconds"] else None,
            "skipped": skips.as_dict(), "tokenizer": ids}
