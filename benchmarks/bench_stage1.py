"""Stage-1 (MetisStage1) CPU benchmark: training step throughput and peak memory with and without
gradient checkpointing, and reverse-diffusion latency.

    python benchmarks/bench_stage1.py                 # hidden 512, 8 layers, 8 heads, V 8192 (~2 min on an idle 2-core CPU)
    python benchmarks/bench_stage1.py --frames 200    # quicker

Each measurement runs in a fresh process. A training step is timed after one warm-up step;
"step peak" is the highest RSS (sampled every 2 ms) during the timed step minus the RSS just before
it, i.e. activations and temporaries on top of weights, gradients and inputs. glibc is told to
mmap large blocks (MALLOC_MMAP_THRESHOLD_) so that freed activations leave RSS at once. The
process max RSS (getrusage) is printed too.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_module
import resource
import threading
import time

import psutil
import torch


def build(args, checkpointing: bool):
    from metis.models.metis_stage1 import MetisStage1

    torch.manual_seed(0)
    return MetisStage1(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                       cond_codebook_size=args.vocab, gradient_checkpointing=checkpointing)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


class PeakRSS:
    """Samples this process's RSS every few ms in a thread; `peak` is the highest value seen (MiB)."""

    def __enter__(self):
        self.peak, self._stop = rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def train_worker(args, checkpointing: bool, queue) -> None:
    model = build(args, checkpointing).train()
    x0 = torch.randint(0, args.vocab, (args.batch, args.frames))
    x_mask = torch.ones(args.batch, args.frames)

    def step():
        out = model(x0, x_mask)
        m = out.final_mask[..., 0].bool()
        loss = torch.nn.functional.cross_entropy(out.logits[m], x0[m])
        loss.backward()
        model.zero_grad(set_to_none=False)  # keep the gradient buffers, as a training loop does

    step()  # warm-up: allocates the gradients and pages in the kernels, which are not per-step costs
    base = rss_mib()
    times, peak = [], 0.0
    for _ in range(args.repeats):
        with PeakRSS() as rss:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        peak = max(peak, rss.peak - base)
    sec = min(times)
    queue.put(dict(sec=sec, tok_s=args.batch * args.frames / sec, peak_mib=peak, maxrss_mib=max_rss_mib()))


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reverse_worker(args, queue) -> None:
    model = build(args, False).eval()
    prompt = torch.randint(0, args.vocab, (1, 0))
    model.reverse_diffusion(prompt, args.rd_frames, n_timesteps=1, cfg=2.5)  # warm-up (2 passes)
    start = time.perf_counter()
    ids = model.reverse_diffusion(prompt, args.rd_frames, n_timesteps=args.rd_steps, cfg=2.5, rescale_cfg=0.75)
    sec = time.perf_counter() - start
    assert ids.shape == (1, args.rd_frames)
    queue.put(dict(sec=sec))


def run(target, *a):
    # glibc otherwise serves freed large blocks from a growing heap and raises its mmap threshold,
    # so RSS would keep freed activations; a fixed threshold makes RSS follow live tensors.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*a, queue))
    proc.start()
    while True:  # a child that dies must not leave us waiting on the queue forever
        try:
            result = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"benchmark worker {target.__name__} exited with code {proc.exitcode}")
    proc.join()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="timed training steps (the best is reported)")
    p.add_argument("--rd-frames", type=int, default=500, help="reverse-diffusion target length (500 = 10 s at 50 Hz)")
    p.add_argument("--rd-steps", type=int, default=25)
    args = p.parse_args()

    print(f"MetisStage1 H={args.hidden} L={args.layers} heads={args.heads} V={args.vocab}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {psutil.cpu_count()} CPUs")
    print(f"train step (fwd+bwd, CE on masked frames), batch {args.batch} x {args.frames} frames:")
    for ckpt in (False, True):
        r = run(train_worker, args, ckpt)
        print(f"  checkpointing={str(ckpt):5}  {r['sec']:7.2f} s/step  {r['tok_s']:8.0f} tokens/s  "
              f"step peak {r['peak_mib']:6.0f} MiB above resting  (process max RSS {r['maxrss_mib']:.0f} MiB)")
    r = run(reverse_worker, args)
    print(f"reverse diffusion, {args.rd_frames} frames, {args.rd_steps} steps, CFG 2.5 (2 passes/step), empty prompt: "
          f"{r['sec']:.2f} s ({args.rd_frames / r['sec']:.0f} frames/s)")


if __name__ == "__main__":
    main()
