"""Requests/s of a 16-request manifest: batched (as `infer.py manifest=... fast=true` batches) vs one at a time.

    python benchmarks/bench_manifest.py                               # tiny and mid, fast fp32, 2 rounds
    python benchmarks/bench_manifest.py --sizes tiny --rounds 3 --precision bf16
    python benchmarks/bench_manifest.py --sizes mid --scale-steps 0.2  # fewer decoding steps on a loaded CPU

Sixteen tts requests of different lengths (prompt 1-3 s, target 1-4 s, phones ~0.4 per frame), random
weights at the sizes of bench_inference.py, through the one generation chain (`generate`, stage 1 ->
S2A 1-layer -> S2A full; the codec decoder is left out: it runs once per request either way). Arms,
timed in turn round by round so that both see the same machine load:
  one at a time   16 calls of generate([item])
  batched         `batch_items` (the pipeline's grouping: task, settings, length-sorted, per shape bucket
                  with --buckets), one generate(batch) per batch of up to --batch-size items.
Every request's tokens must be equal in both arms (per-row decoding: a request does not depend on its
batch); the script checks it and prints requests/s, the speed-up and the machine load.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's metis, before an installed one
from bench_inference import SIZES, build, make_item  # noqa: E402  (benchmarks/, beside this script)
from metis.inference.generate import generate  # noqa: E402
from metis.inference.pipeline import batch_items  # noqa: E402
from metis.models.decoding import FastDecoding  # noqa: E402


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} CPUs"


def manifest(vocab: int, n: int, scale_steps: float) -> list:
    g = torch.Generator().manual_seed(0)
    items = []
    for r in range(n):
        prompt = int(torch.randint(50, 151, (1,), generator=g))
        target = int(torch.randint(50, 201, (1,), generator=g))
        it = make_item("tts", vocab, prompt, target)
        st1 = dataclasses.replace(it.stage1, n_timesteps=max(1, round(it.stage1.n_timesteps * scale_steps)))
        s1 = dataclasses.replace(it.s2a_1layer, n_timesteps=tuple(max(1, round(s * scale_steps)) for s in it.s2a_1layer.n_timesteps))
        sf = dataclasses.replace(it.s2a_full, n_timesteps=tuple(max(1, round(s * scale_steps)) for s in it.s2a_full.n_timesteps))
        items.append(dataclasses.replace(it, request=r, seed=1000 + r, stage1=st1, s2a_1layer=s1, s2a_full=sf))
    return items


def run(size: str, args) -> None:
    stage1, s1, sf = build(size, torch.device("cpu"))
    for m in (*stage1.values(), s1, sf):
        m.eval().requires_grad_(False)
    net = stage1["tts"]
    items = manifest(SIZES[size]["vocab"], args.requests, args.scale_steps)
    fast = FastDecoding(precision=args.precision, buckets=tuple(args.buckets) if args.buckets else None)
    batches = batch_items(items, args.batch_size, fast.buckets)
    frames = sum(it.prompt_ids.numel() + it.target_len for it in items)
    print(f"{size}: {len(items)} tts requests ({frames} prompt + target frames), fast {fast}, batches of "
          f"{[len(b) for b in batches]}, stage-1 steps {items[0].stage1.n_timesteps}, "
          f"{torch.get_num_threads()} thread(s) ({load()})", flush=True)
    out = {}

    def one_at_a_time():
        out["solo"] = {it.request: generate([it], net, s1, sf, fast=fast) for it in items}

    def batched():
        res = {}
        for batch in batches:
            gen = generate(batch, net, s1, sf, fast=fast)
            for k, it in enumerate(batch):
                res[it.request] = (gen.semantic[k], gen.codes[k])
        out["batched"] = res

    arms = {"one at a time": one_at_a_time, "batched": batched}
    times = {k: [] for k in arms}
    for r in range(args.rounds):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()) + f"  ({load()})", flush=True)
    equal = all(torch.equal(out["solo"][i].semantic[0], out["batched"][i][0]) and torch.equal(out["solo"][i].codes[0], out["batched"][i][1])
                for i in range(len(items)))
    base = statistics.median(times["one at a time"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<14} median {med:7.2f} s  {len(items) / med:7.3f} requests/s  x{base / med:.2f}", flush=True)
    print(f"  every request's tokens equal batched vs one at a time: {equal}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--buckets", type=int, nargs="*", default=None, help="shape buckets (frames), e.g. 128 256 512")
    ap.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale-steps", type=float, default=1.0, help="multiply every published step count (min 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {load()}")
    for size in args.sizes:
        run(size, args)


if __name__ == "__main__":
    main()
