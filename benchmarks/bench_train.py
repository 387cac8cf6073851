"""Pre-training throughput and peak memory through the real recipe (`train(cfg)`: Lightning module,
optimizer, scheduler) on synthetic tokens, at the tiny and a mid size, with and without gradient
checkpointing. Each configuration runs in its own process so that peak RSS is its own.

    python benchmarks/bench_train.py                       # tiny + mid, checkpointing off/on
    python benchmarks/bench_train.py --sizes mid --steps 6 --frames 1000 --batch 2

tokens/s counts valid (non-padding) frames per second over the timed steps (the first `--warmup`
optimizer steps are excluded). Peak RSS is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

SIZES = {  # hidden, layers, heads, vocab
    "tiny": (128, 4, 4, 512),
    "mid": (512, 8, 8, 8192),
}
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def run_one(size: str, checkpointing: bool, args, out: mp.Queue) -> None:
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir

    from metis.lightning.training import train

    hidden, layers, heads, vocab = SIZES[size]
    torch.set_num_threads(args.threads)

    class Timer(L.Callback):
        def __init__(self):
            self.t0 = None
            self.tokens = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == args.warmup and self.t0 is None:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self.t0 is not None:
                self.tokens += int(batch["sem_mask"].sum())

    timer = Timer()
    original = L.Trainer.__init__

    def with_timer(self, *a, callbacks=None, **kw):
        original(self, *a, callbacks=list(callbacks or []) + [timer], **kw)

    L.Trainer.__init__ = with_timer
    overrides = [
        "data=synthetic", f"data.codebook_size={vocab}", f"data.min_len={args.frames}", f"data.max_len={args.frames}",
        f"data.batch_size={args.batch}", f"data.n_train={args.batch * (args.steps + 1)}", "data.n_val=1",
        f"model.net.hidden_size={hidden}", f"model.net.num_layers={layers}", f"model.net.num_heads={heads}",
        f"model.net.gradient_checkpointing={str(checkpointing).lower()}", f"trainer.max_steps={args.steps}",
        "trainer.limit_val_batches=0", "trainer.enable_model_summary=false", "callbacks=none", "logger=none",
        f"paths.root_dir={tempfile.mkdtemp()}", "ckpt_path=null",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    train(cfg)
    elapsed = time.perf_counter() - timer.t0
    out.put({"size": size, "checkpointing": checkpointing, "tokens_per_s": timer.tokens / elapsed,
             "step_s": elapsed / (args.steps - args.warmup),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=sorted(SIZES))
    p.add_argument("--frames", type=int, default=500, help="frames per sequence (50 Hz: 500 = 10 s)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")

    ctx = mp.get_context("spawn")
    print(f"{'size':<5} {'ckpt':<5} {'tokens/s':>9} {'s/step':>7} {'peak RSS MB':>12}   "
          f"(batch {args.batch} x {args.frames} frames, {args.threads} threads)")
    for size in args.sizes:
        for checkpointing in (False, True):
            q = ctx.Queue()
            proc = ctx.Process(target=run_one, args=(size, checkpointing, args, q))
            proc.start()
            r = q.get()
            proc.join()
            print(f"{size:<5} {str(checkpointing):<5} {r['tokens_per_s']:>9.0f} {r['step_s']:>7.2f} {r['peak_rss_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
