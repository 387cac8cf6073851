"""How much do the demo's k-means tokens carry? Numbers for the tokens of a built demo corpus.

    python benchmarks/bench_tokens.py                          # data/demo (python train.py builds it)
    python benchmarks/bench_tokens.py --refit 64 128 256       # also refit k-means with these sizes

Per tokenizer, on the held-out speakers' utterances (tokens/val, the audio in the shards):
    perplexity      exp(entropy) of the token distribution: how much of the codebook is in use
    H(x), H(x|prev) unigram entropy and the entropy given the previous frame's token (bits; the train
                    split's counts, add-one smoothed): what one neighbour tells about a frame
    run length      mean frames per run of one token (50 Hz: 1 = a new token every 20 ms)
    copy@1          copy the previous frame: the accuracy the copy-nearest baseline lives on
    speaker MI      I(token; speaker) / H(speaker) over the val speakers: speaker information in single
                    tokens (semantic tokens should carry little)
    noise agree     fraction of frames whose token survives white noise at 10 dB SNR (what an SE model's
                    condition tokens share with the clean target)
    inertia ratio   k-means within-cluster squared distance / total variance of the CMVN features
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from metis.audio import read
from metis.data.shards import TOKENIZER_MEMBER, expand_shards, iter_tar
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer, assign


def utterances(shards: str, limit: int | None = None) -> list[tuple[str, torch.Tensor]]:
    out = []
    for url in expand_shards(shards):
        for s in iter_tar(url):
            if s["__key__"] == TOKENIZER_MEMBER or "flac" not in s:
                continue
            wav, _ = read(s["flac"])
            out.append((json.loads(s["json"])["speaker"], torch.from_numpy(wav)))
            if limit and len(out) >= limit:
                return out
    return out


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def measure(tok: KMeansTokenizer, train: list, val: list, seed: int = 0) -> dict:
    k = tok.codebook_size
    codes_tr = tok.encode([w for _, w in train])
    codes = tok.encode([w for _, w in val])
    uni = np.ones(k)
    big = np.ones((k, k))
    for c in codes_tr:
        c = c.numpy()
        np.add.at(uni, c, 1)
        np.add.at(big, (c[:-1], c[1:]), 1)
    p_uni = uni / uni.sum()
    p_big = big / big.sum(1, keepdims=True)
    h, h_cond, copy, runs, n_pairs = 0.0, 0.0, 0, [], 0
    allv = np.concatenate([c.numpy() for c in codes])
    for c in codes:
        c = c.numpy()
        h -= np.log2(p_uni[c]).sum()
        h_cond -= np.log2(p_big[c[:-1], c[1:]]).sum()
        copy += int((c[1:] == c[:-1]).sum())
        n_pairs += len(c) - 1
        change = np.flatnonzero(np.diff(c)) + 1
        runs.extend(np.diff(np.concatenate([[0], change, [len(c)]])).tolist())
    # speaker information in single tokens
    spk = [s for (s, _), c in zip(val, codes) for _ in range(len(c))]
    joint = Counter(zip(spk, allv.tolist()))
    ps, pt = Counter(spk), Counter(allv.tolist())
    n = len(allv)
    mi = sum(v / n * math.log2((v / n) / (ps[s] / n * pt[t] / n)) for (s, t), v in joint.items())
    h_spk = entropy(np.array(list(ps.values()), dtype=float))
    # robustness to noise
    g = torch.Generator().manual_seed(seed)
    noisy = []
    for _, w in val:
        noise = torch.randn(w.shape, generator=g)
        noisy.append(w + noise * w.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt() / math.sqrt(10))
    agree = np.mean([float((a == b).float().mean()) for a, b in zip(codes, tok.encode(noisy))])
    feats = torch.cat(tok.features([w for _, w in val]))
    _, dist = assign(feats, tok.centroids)
    inertia = float(dist.mean() / feats.var(0).sum())
    return {"codebook": k, "perplexity": float(2 ** entropy(np.bincount(allv, minlength=k).astype(float))),
            "H_unigram_bits": h / len(allv), "H_given_prev_bits": h_cond / max(len(allv) - len(codes), 1),
            "mean_run_frames": float(np.mean(runs)), "copy_prev_acc": copy / max(n_pairs, 1),
            "speaker_mi_ratio": mi / h_spk, "noise10db_agree": float(agree), "inertia_ratio": inertia}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="data/demo")
    p.add_argument("--refit", type=int, nargs="*", default=[], help="also refit k-means with these codebook sizes")
    p.add_argument("--val-limit", type=int, default=60)
    p.add_argument("--train-limit", type=int, default=400)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    root = Path(args.demo)
    train = utterances(str(root / "tokens" / "train"), args.train_limit)
    val = utterances(str(root / "tokens" / "val"), args.val_limit)
    rows = {}
    tok = KMeansTokenizer.load(root / "tokenizer")
    rows[f"kmeans{tok.codebook_size} (built)"] = measure(tok, train, val)
    for k in args.refit:
        t0 = time.time()
        cfg = KMeansConfig(**{**tok.config.__dict__, "n_clusters": k})
        refit = KMeansTokenizer.fit([w for _, w in train], cfg, log=lambda *_: None)
        rows[f"kmeans{k} (refit {time.time() - t0:.0f}s)"] = measure(refit, train, val)
    keys = list(next(iter(rows.values())))
    print(f"{len(train)} train / {len(val)} val utterances ({len({s for s, _ in val})} held-out speakers)")
    print(f"{'tokenizer':<24}" + "".join(f"{k:>18}" for k in keys[1:]))
    for name, r in rows.items():
        print(f"{name:<24}" + "".join(f"{r[k]:>18.3f}" for k in keys[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
