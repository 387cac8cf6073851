"""Old path vs new path, side by side in one run, interleaved (CPU; the numbers are in benchmarks/README.md).

    python benchmarks/bench_speed.py                                   # all sections (~15 min on a loaded 2-core CPU)
    python benchmarks/bench_speed.py --sections train --rounds 5
    python benchmarks/bench_speed.py --sections packing --corpus data/demo/tokens/train

"old" is the code of `--old-rev` (default: the commit before packing / no-mask attention landed), loaded
from git into a private package `metis_old` next to the current `metis`, so both run in one process
on the same weights, inputs and random draws. Each round times every path once, in turn, so a change
in machine load hits all paths alike; the median over rounds is printed with the load average.

Sections:
  train    one whole training step (forward, masked CE, backward, AdamW step) of stage 1 at H=512,
           8 layers, 8 heads, vocab 1024, B=2 x T=1000 (no padding): old (additive zero mask, fp32
           norm round trip, foreach AdamW) vs new (no mask, fused rms_norm, fused AdamW), new with
           regional compile, new under bf16 autocast.
  packing  the demo corpus's token-budget batches (`--corpus`, built by `python train.py`), tiny demo
           model: padded (packing=off) vs packed (packing=compute) on the same batches; padding share
           of the computed tokens; and tokens/s with the real-frame budget the packed model gets.
  decode   stage-1 decoding, prompt 150 + 350 frames, 25 steps, CFG 2.5, batch 1, H=512 x 8 layers,
           vocab 1024: faithful vs fast (old), fast (new, fp32) and fast (new, bf16 autocast); token
           agreement with faithful.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metis.lightning.metrics import masked_token_loss  # noqa: E402
from metis.models.decoding import DecodeConfig, UniformNoise  # noqa: E402
from metis.models.llama_nar import estimator_of  # noqa: E402
from metis.models.metis_stage1 import MetisStage1  # noqa: E402

OLD_REV = "b91cdce"  # main just before packing / no-mask attention / fused norm


def old_stage1(rev: str):
    """MetisStage1 of `rev` (metis/models/* from git, imported as metis_old.models.*)."""
    root = Path(tempfile.mkdtemp(prefix="metis_old_"))
    pkg = root / "metis_old" / "models"
    pkg.mkdir(parents=True)
    (root / "metis_old" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    for name in ("llama_nar", "decoding", "metis_stage1", "s2a"):
        src = subprocess.run(["git", "show", f"{rev}:metis/models/{name}.py"], cwd=REPO, capture_output=True, text=True)
        if src.returncode != 0:
            raise SystemExit(f"--old-rev {rev}: git show failed ({src.stderr.strip()}); run inside the git clone")
        (pkg / f"{name}.py").write_text(src.stdout.replace("metis.models.", "metis_old.models."))
    sys.path.insert(0, str(root))
    return importlib.import_module("metis_old.models.metis_stage1").MetisStage1


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} CPUs"


def interleave(paths: dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """paths: name -> zero-argument step; `warmup` untimed calls each, then `rounds` rounds of one timed call each."""
    for _ in range(warmup):
        for step in paths.values():
            step()
    times = {name: [] for name in paths}
    for r in range(rounds):
        for name, step in paths.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in paths) + f"  ({load()})", flush=True)
    return times


def report(times: dict[str, list[float]], unit: str, work: float, base: str) -> None:
    ref = statistics.median(times[base])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<22} median {med:7.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})  {work / med:9.0f} {unit}  "
              f"x{ref / med:.2f} vs {base}", flush=True)


# ----------------------------------------------------------------------------------------------- train

def train_step(net, x0, x_mask, optimizer, autocast: bool = False):
    def step():
        torch.manual_seed(0)  # the same corruption every call and path
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x0, x_mask)
            loss = masked_token_loss(out.logits, x0, out.final_mask)[0]
        loss.backward()
        optimizer.step()
    return step


def section_train(args) -> None:
    Old = old_stage1(args.old_rev)
    size = dict(hidden_size=512, num_layers=8, num_heads=8, cond_codebook_size=1024)
    x0 = torch.randint(0, 1024, (2, 1000), generator=torch.Generator().manual_seed(1))
    x_mask = torch.ones(2, 1000)
    paths = {}
    torch.manual_seed(0)
    old = Old(**size).train()
    paths["old"] = train_step(old, x0, x_mask, torch.optim.AdamW(old.parameters(), lr=1e-4))
    variants = [("new", False, False), ("new bf16 autocast", False, True)] + ([("new compiled", True, False)] if args.compile else [])
    for name, compiled, bf16 in variants:
        torch.manual_seed(0)
        net = MetisStage1(**size, packing="compute").train()
        net.load_state_dict(old.state_dict())
        if compiled:
            estimator_of(net).compile_layers()
        paths[name] = train_step(net, x0, x_mask, torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True), autocast=bf16)
    print(f"train step, stage 1 H=512 x 8 layers, vocab 1024, 2 x 1000 frames, {torch.get_num_threads()} threads ({load()})")
    report(interleave(paths, args.rounds), "tokens/s", 2000, "old")


# --------------------------------------------------------------------------------------------- packing

def corpus_batches(corpus: str, packed: bool, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from metis.data.loader import build_loader

    loader = build_loader(corpus, mode="val", max_tokens=3000, num_workers=0, min_dur=0.4, max_dur=20.0,
                          packed=packed, required_json=("duration",))
    out = []
    for batch in loader:
        out.append((batch["sem"], batch["sem_mask"]))
        if len(out) == n:
            break
    return out


def section_packing(args) -> None:
    if not Path(args.corpus).exists():
        print(f"packing: no corpus at {args.corpus} (build it with `python train.py`, or pass --corpus); skipped")
        return
    padded_budget = corpus_batches(args.corpus, False, args.batches)
    packed_budget = corpus_batches(args.corpus, True, args.batches)
    real = sum(int(m.sum()) for _, m in padded_budget)
    area = sum(m.numel() for _, m in padded_budget)
    print(f"packing: demo corpus, {len(padded_budget)} token-budget batches of <= 3000 padded frames: {real} real of "
          f"{area} padded frames (padding {1 - real / area:.1%}); tiny demo model (128 x 4 layers, vocab 512) ({load()})")
    nets = {}
    for packing in ("off", "compute"):
        torch.manual_seed(0)
        nets[packing] = MetisStage1(hidden_size=128, num_layers=4, num_heads=4, cond_codebook_size=512, packing=packing,
                                    norm_init="unit").train()
    nets["compute"].load_state_dict(nets["off"].state_dict())

    def run(net, batches):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def steps():
            for x0, m in batches:
                torch.manual_seed(0)
                opt.zero_grad(set_to_none=False)
                out = net(x0.remainder(512), m)
                masked_token_loss(out.logits, x0.remainder(512), out.final_mask)[0].backward()
                opt.step()
        return steps

    paths = {"padded (off)": run(nets["off"], padded_budget), "packed (compute)": run(nets["compute"], padded_budget)}
    times = interleave(paths, args.rounds)
    print(f"  same batches: computed tokens padded {area}, packed {real} (padding compute {0:.1%})")
    report(times, "real frames/s", real, "padded (off)")
    real_packed = sum(int(m.sum()) for _, m in packed_budget)
    t = interleave({"packed, real-frame budget": run(nets["compute"], packed_budget)}, args.rounds)
    print(f"  real-frame budget: {len(packed_budget)} batches hold {real_packed} frames "
          f"({real_packed / len(packed_budget):.0f} per batch vs {real / len(padded_budget):.0f} under the padded budget)")
    report(t, "real frames/s", real_packed, "packed, real-frame budget")


# ---------------------------------------------------------------------------------------------- decode

def section_decode(args) -> None:
    Old = old_stage1(args.old_rev)
    size = dict(hidden_size=args.dec_hidden, num_layers=args.dec_layers, num_heads=8, cond_codebook_size=1024)
    torch.manual_seed(0)
    old = Old(**size).eval().requires_grad_(False)
    new = MetisStage1(**size, packing="compute").eval().requires_grad_(False)
    new.load_state_dict(old.state_dict())
    prompt = torch.randint(0, 1024, (args.dec_prompt,), generator=torch.Generator().manual_seed(2))
    settings = DecodeConfig(n_timesteps=args.dec_steps, temp=0.9, filter_thres=0.98, cfg=2.5, rescale_cfg=0.75)
    results = {}

    def decode(net, fast, bf16=False):
        def run():
            noise = [UniformNoise(torch.Generator().manual_seed(7))]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                results[(id(net), fast, bf16)] = net.reverse_diffusion_rows([prompt], [args.dec_target], settings, noises=noise, fast=fast)[0]
        return run

    paths = {"faithful (old)": decode(old, False), "fast (old)": decode(old, True), "faithful (new)": decode(new, False),
             "fast (new, fp32)": decode(new, True), "fast (new, bf16)": decode(new, True, True)}
    paths = {k: v for k, v in paths.items() if k != "faithful (new)" or args.rounds > 1}  # an exactness check, costly
    print(f"decode: stage 1 H={args.dec_hidden} x {args.dec_layers}, vocab 1024, prompt {args.dec_prompt} + {args.dec_target} "
          f"frames, {args.dec_steps} steps, CFG 2.5, batch 1, "
          f"{torch.get_num_threads()} threads ({load()})")
    times = interleave(paths, args.rounds, args.warmup)
    report(times, "frames/s", args.dec_target, "faithful (old)")
    ref = results[(id(old), False, False)]
    for name, key in (*((("faithful (new)", (id(new), False, False)),) if (id(new), False, False) in results else ()), ("fast (new, fp32)", (id(new), True, False)),
                      ("fast (new, bf16)", (id(new), True, True)), ("fast (old)", (id(old), True, False))):
        print(f"  token agreement with faithful (old): {name:<18} {(results[key] == ref).float().mean().item():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["train", "packing", "decode"], choices=["train", "packing", "decode"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--corpus", default=str(REPO / "data" / "demo" / "tokens" / "train"))
    ap.add_argument("--dec-hidden", type=int, default=512, help="decode: hidden size (the issue's side-by-side: 512)")
    ap.add_argument("--dec-layers", type=int, default=8)
    ap.add_argument("--dec-prompt", type=int, default=150)
    ap.add_argument("--dec-target", type=int, default=350)
    ap.add_argument("--dec-steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=1, help="decode: untimed calls per path first (0 on a very loaded machine)")
    ap.add_argument("--batches", type=int, default=12, help="packing: corpus batches per timed pass")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="train: also time regional compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, old = {args.old_rev}, {load()}")
    for s in args.sections:
        globals()[f"section_{s}"](args)


if __name__ == "__main__":
    main()
