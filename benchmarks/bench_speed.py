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
           8 layers, 8 heads, vocab 1024, B=2 x T=1000 (no padding): the reference (its computation
           re-written in benchmarks/reference_arm.py, checked against its golden fixture: eager
           attention with a (b, 1, l, l) mask, per-layer RoPE, fp32 norm round trip, torch's default
           AdamW), old (additive zero mask, fp32 norm round trip) vs new (no mask, fused rms_norm,
           fused AdamW), new with regional compile, new under bf16 autocast. Every arm's first loss is
           printed: they compute the same loss.
  packing  the demo corpus's token-budget batches (`--corpus`, built by `python train.py`), tiny demo
           model: padded (packing=off) vs packed (packing=compute) on the same batches; padding share
           of the computed tokens; and tokens/s with the real-frame budget the packed model gets.
  decode   stage-1 decoding, prompt 150 + 350 frames, 25 steps, CFG 2.5, batch 1, H=512 x 8 layers,
           vocab 1024: faithful vs fast (old rev), fast fp32, fast fp32 with shape buckets and fast
           bf16 (`FastDecoding(precision="bf16")`, the CPU bf16 switch); token agreement with faithful.
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
from metis.models.decoding import DecodeConfig, FastDecoding, UniformNoise  # noqa: E402
from metis.models.llama_nar import estimator_of  # noqa: E402
from metis.models.metis_stage1 import MetisStage1  # noqa: E402
from reference_arm import ReferenceStage1  # noqa: E402  (benchmarks/, beside this script)

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
    """paths: name -> zero-argument step; `warmup` untimed calls each, then `rounds` rounds of one timed call
    each. Prints wall and process CPU seconds per call (CPU seconds are less sensitive to other jobs on a
    shared machine: time spent waiting for a core is not counted); returns the wall times."""
    for _ in range(warmup):
        for step in paths.values():
            step()
    times = {name: [] for name in paths}
    cpu = {name: [] for name in paths}
    for r in range(rounds):
        for name, step in paths.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s (cpu {cpu[n][-1]:.1f}s)" for n in paths)
              + f"  ({load()})", flush=True)
    base = next(iter(paths))
    print("  median cpu seconds: " + ", ".join(f"{n} {statistics.median(c):.2f} (x{statistics.median(cpu[base]) / statistics.median(c):.2f})"
                                               for n, c in cpu.items()), flush=True)
    return times


def report(times: dict[str, list[float]], unit: str, work: float, base: str) -> None:
    ref = statistics.median(times[base])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<22} median {med:7.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})  {work / med:9.0f} {unit}  "
              f"x{ref / med:.2f} vs {base}", flush=True)


# ----------------------------------------------------------------------------------------------- train

def train_step(net, x0, x_mask, optimizer, autocast: bool = False, losses: list | None = None):
    """One step as the trainers run it (`zero_grad()` sets the gradients to None, torch's and Lightning's
    default); the first step's loss goes to `losses` (every arm must compute the same loss)."""
    def step():
        torch.manual_seed(0)  # the same corruption every call and path
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(x0, x_mask)
            logits, final_mask = (out.logits, out.final_mask) if hasattr(out, "logits") else out
            loss = masked_token_loss(logits, x0, final_mask)[0]
        loss.backward()
        optimizer.step()
        if losses is not None and not losses:
            losses.append(loss.item())
    return step


def section_train(args) -> None:
    Old = old_stage1(args.old_rev)
    size = dict(hidden_size=512, num_layers=8, num_heads=8, cond_codebook_size=1024)
    x0 = torch.randint(0, 1024, (2, 1000), generator=torch.Generator().manual_seed(1))
    x_mask = torch.ones(2, 1000)
    paths, losses = {}, {}
    torch.manual_seed(0)
    old = Old(**size).train()
    ref = ReferenceStage1(**size).train()
    ref.load_state_dict(old.state_dict())
    for name, net in (("reference", ref), ("old", old)):  # torch's default AdamW (for-loop on CPU)
        losses[name] = []
        paths[name] = train_step(net, x0, x_mask, torch.optim.AdamW(net.parameters(), lr=1e-4), losses=losses[name])
    variants = [("new", False, False), ("new bf16 autocast", False, True)] + ([("new compiled", True, False)] if args.compile else [])
    for name, compiled, bf16 in variants:
        torch.manual_seed(0)
        net = MetisStage1(**size, packing="compute").train()
        net.load_state_dict(old.state_dict())
        if compiled:
            estimator_of(net).compile_layers()
        losses[name] = []
        paths[name] = train_step(net, x0, x_mask, torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True), autocast=bf16,
                                 losses=losses[name])
    print(f"train step, stage 1 H=512 x 8 layers, vocab 1024, 2 x 1000 frames, {torch.get_num_threads()} threads ({load()})")
    times = interleave(paths, args.rounds)
    print("  first-step loss: " + ", ".join(f"{n} {v[0]:.6f}" for n, v in losses.items()))
    report(times, "tokens/s", 2000, "reference")


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
    buckets = tuple(args.buckets)
    results = {}

    def decode(name, net, fast):
        def run():
            noise = [UniformNoise(torch.Generator().manual_seed(7))]
            results[name] = net.reverse_diffusion_rows([prompt], [args.dec_target], settings, noises=noise, fast=fast)[0]
        return run

    paths = {"faithful": decode("faithful", new, False),
             "fast (old rev)": decode("fast (old rev)", old, True),
             "fast fp32": decode("fast fp32", new, FastDecoding(precision="fp32")),
             f"fast fp32 buckets {list(buckets)}": decode(f"fast fp32 buckets {list(buckets)}", new,
                                                          FastDecoding(precision="fp32", buckets=buckets)),
             "fast bf16": decode("fast bf16", new, FastDecoding(precision="bf16"))}
    paths = {k: v for k, v in paths.items() if not args.dec_paths or k in args.dec_paths}
    print(f"decode: stage 1 H={args.dec_hidden} x {args.dec_layers}, vocab 1024, prompt {args.dec_prompt} + {args.dec_target} "
          f"frames, {args.dec_steps} steps, CFG 2.5, batch 1, {torch.get_num_threads()} threads ({load()})")
    times = interleave(paths, args.rounds, args.warmup)
    report(times, "frames/s", args.dec_target, next(iter(paths)))
    if "faithful" in results:
        for name, ids in results.items():
            print(f"  token agreement with faithful: {name:<28} {(ids == results['faithful']).float().mean().item():.3f}")


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
    ap.add_argument("--buckets", type=int, nargs="+", default=[256, 512, 1024], help="decode: the bucketed path's lengths")
    ap.add_argument("--dec-paths", nargs="*", default=None, help="decode: only these paths (default all)")
    ap.add_argument("--batches", type=int, default=12, help="packing: corpus batches per timed pass")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="train: also time regional compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, old = {args.old_rev}, {load()}")
    for s in args.sections:
        globals()[f"section_{s}"](args)


if __name__ == "__main__":
    main()
