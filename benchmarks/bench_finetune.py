"""Fine-tuning step on CPU: LoRA (r=32, + zero-gate adapter) vs full fine-tuning of a mid-size MetisStage1.

    python benchmarks/bench_finetune.py                      # hidden 512, 8 layers, 8 heads, V 8192, cond 1024
    python benchmarks/bench_finetune.py --frames 200 --steps 3

Each mode runs in a fresh process (clean peak memory). A step = forward + masked-token loss + backward +
AdamW step on the trainable parameters, on a (batch, frames) SE-style input with a 1024-d condition;
timed after one warm-up step (median of --steps). Memory: process max RSS (getrusage) after the timed
steps, and the RSS right after building the model (weights), so the difference is what training adds
(gradients, optimizer state, activations). Trainable / total parameter counts are printed per mode.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import psutil
import torch


def run(mode: str, args, out: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    from metis.checkpoints.lora import wrap_lora
    from metis.lightning.trainable import describe_trainable
    from metis.lightning.metrics import masked_token_loss
    from metis.models.metis_stage1 import MetisStage1

    torch.manual_seed(0)
    net = MetisStage1(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads, cond_codebook_size=args.vocab,
                      ft_type="se", cond_dim=1024, gradient_checkpointing=args.checkpointing)
    if mode == "lora":
        net = wrap_lora(net, r=args.r)
    summary, trainable, total = describe_trainable(net)
    rss_model = psutil.Process().memory_info().rss
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    b, t = args.batch, args.frames
    x0 = torch.randint(args.vocab, (b, t))
    mask = torch.ones(b, t)
    cond = torch.randn(b, t, 1024)
    prompt = torch.zeros(b, dtype=torch.long)
    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        o = net(x0, mask, finetune_cond=cond, prompt_len=prompt)
        loss, _ = masked_token_loss(o.logits, x0, o.final_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.put({"mode": mode, "summary": summary, "trainable": trainable, "total": total, "step_s": statistics.median(times),
             "rss_model_mb": rss_model / 2**20, "peak_mb": peak / 2**20})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--r", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=500, help="frames per sample (50 Hz): 500 = 10 s")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both modes")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for mode in ("lora", "full"):
        q = ctx.Queue()
        proc = ctx.Process(target=run, args=(mode, args, q))
        proc.start()
        rows.append(q.get())
        proc.join()
    print(f"MetisStage1 se: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, V {args.vocab}; "
          f"batch {args.batch} x {args.frames} frames; {args.threads} thread(s); checkpointing {args.checkpointing}")
    print(f"{'mode':<5} {'trainable / total':<46} {'step s':>8} {'weights MB':>11} {'peak MB':>9} {'added MB':>9}")
    for r in rows:
        print(f"{r['mode']:<5} {r['summary']:<46} {r['step_s']:>8.2f} {r['rss_model_mb']:>11.0f} {r['peak_mb']:>9.0f} "
              f"{r['peak_mb'] - r['rss_model_mb']:>9.0f}")


if __name__ == "__main__":
    main()
