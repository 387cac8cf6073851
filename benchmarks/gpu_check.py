"""One short GPU check of the paper-size stage-1 model (16 x 1536, ~726M parameters), needing only torch
(+ deepspeed for the ZeRO-2 rows, + peft for the LoRA row; each missing one is reported and skipped).

    python benchmarks/gpu_check.py                  # ~200 steps per row on one GPU, a few minutes
    python benchmarks/gpu_check.py --quick          # 20 steps per row
    python benchmarks/gpu_check.py --device cpu --tiny --steps 3   # dry run of the same code on CPU

Rows (synthetic SSL tokens, 10K tokens per GPU per step = `--batch` x `--frames`, bf16):
    zero2            DeepSpeed ZeRO-2, bf16, AdamW, gradient checkpointing off
    zero2_ckpt       the same with gradient checkpointing on (activation memory <-> recompute)
    lora_r32         peft LoRA r=32 (alpha 64) on the 7 projections of every layer, base frozen,
                     plain torch bf16 autocast + AdamW over the LoRA tensors
    torch            plain torch: bf16 autocast, fused AdamW, no mask (no padding: flash-eligible SDPA)
    compiled         the same with regional compile (`LlamaNAR.compile_layers`, one graph per layer)
    padded, packed   variable-length utterances (log-normal ~6 s, <= `--frames`) filling the same token
                     budget: packing="off" (padded batch, additive key mask) vs packing="compute"
                     (packed row, flash varlen attention, nothing computed on padding); tokens/s counts
                     real frames in both
    decode           fast stage-1 decoding (batched CFG, bf16) of 350 frames after a 150-frame prompt,
                     25 steps, CFG 2.5, at batch 1 and 16, with and without regional compile; RTF and
                     token agreement with faithful fp32 decoding
    decode_graphs    the same fast bf16 decoding with static shape buckets (256/512/1024/2048) and CUDA
                     graphs (one capture per bucket shape, replayed every step) vs without, batch 1 and
                     16; and a 16-request "manifest" of mixed lengths (prompt 50-150, target 50-400)
                     decoded one at a time vs batched per bucket (requests/s, each request's tokens
                     compared with its solo run)

Per row: tokens/s (timed steps after `--warmup`), step time, peak GPU memory
(torch.cuda.max_memory_allocated), and model FLOPs utilisation; `mfu_attn` adds the attention FLOPs
(`metis.lightning.throughput.training_flops`: 6N + 12 · layers · d · Σ L², what `train/mfu` logs)

    MFU = 6 * N * tokens_per_s / peak_flops

with N the parameters the forward uses (all of them, also for LoRA: its backward still runs through the
frozen weights, about 2/3 of 6N FLOPs, so LoRA's MFU by this formula is an overestimate of useful
work), 6 = 2 forward + 4 backward FLOPs per parameter per token, attention score FLOPs left out (at
1000-frame sequences they add ~ 12·L·T·d / 6N ≈ 6 %), and peak_flops the card's dense bf16 peak
(H100/H200 SXM 989e12, A100 312e12; `--peak-tflops` overrides). Gradient checkpointing recomputes the
forward (8N instead of 6N actually executed) but MFU counts 6N either way, as is customary.

On CUDA each row runs in a fresh subprocess (`--in-process` to run all in one): DeepSpeed leaves GPU
memory allocated after its row, which would otherwise count in the next row's peak.

Prints one JSON line per row and a table; `--out file.json` writes them too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metis.atomic import write_json  # noqa: E402  (standard library only)
from metis.lightning.metrics import masked_token_loss  # noqa: E402  (torch only)
from metis.lightning.throughput import per_token_matmul_params, training_flops  # noqa: E402
from metis.models.decoding import DecodeConfig, FastDecoding, UniformNoise, bucket_length  # noqa: E402
from metis.models.llama_nar import estimator_of  # noqa: E402
from metis.models.metis_stage1 import MetisStage1  # noqa: E402  (torch only)

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.0}
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, cond_codebook_size=64)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def build_net(args, checkpointing: bool, packing: str = "compute") -> MetisStage1:
    kw = dict(TINY) if args.tiny else {}
    torch.manual_seed(0)
    return MetisStage1(**kw, gradient_checkpointing=checkpointing, norm_init="unit", packing=packing)


def varlen_batch(args, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Utterances of log-normal lengths (~6 s at 50 Hz, at most --frames) filling batch x frames real frames."""
    g = torch.Generator().manual_seed(0)
    budget, lens = args.batch * args.frames, []
    while sum(lens) < budget:
        n = int(min(args.frames, max(50, torch.empty(1).log_normal_(5.7, 0.6, generator=g).item())))
        lens.append(min(n, budget - sum(lens)) if budget - sum(lens) >= 10 else 10)
    lens = torch.tensor(lens)
    tokens = torch.randint(0, vocab, (len(lens), int(lens.max())), generator=g).to(device)
    mask = (torch.arange(int(lens.max()))[None] < lens[:, None]).float().to(device)
    return tokens, mask


def batch(args, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, vocab, (args.batch, args.frames), device=device)
    return tokens, torch.ones(args.batch, args.frames, device=device)


def loss_of(net, tokens, mask) -> torch.Tensor:
    out = net(tokens, mask)
    loss, _ = masked_token_loss(out.logits.float(), tokens, out.final_mask)
    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, args, device: torch.device) -> dict:
    """Run `warmup` + `steps` calls of `step()`; time the latter."""
    start = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device) / 2**30
    for _ in range(args.warmup):
        loss = step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    _sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_s": dt, "tokens_per_s": args.batch * args.frames / dt, "peak_mem_gib": peak, "mem_at_start_gib": start,
            "last_loss": float(loss)}


def row_zero2(args, device: torch.device, checkpointing: bool) -> dict:
    try:
        import deepspeed
    except ImportError:
        print("note: deepspeed is not installed: this row runs plain torch (bf16 autocast, fp32 weights, AdamW) "
              "instead of ZeRO-2; on one GPU ZeRO-2 shards nothing, so throughput is comparable, memory is not",
              file=sys.stderr, flush=True)
        return row_torch(args, device, checkpointing)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    net = build_net(args, checkpointing).to(device)
    n_params = sum(p.numel() for p in net.parameters())
    bf16 = args.dtype == "bf16"
    config = {
        "train_micro_batch_size_per_gpu": args.batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": 2e8, "allgather_bucket_size": 2e8},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01,
                                  fused=device.type == "cuda")
    engine, _, _, _ = deepspeed.initialize(model=net, optimizer=optimizer, config=config,
                                           dist_init_required=True)
    tokens, mask = batch(args, net.cond_codebook_size, device)

    def step():
        loss = loss_of(engine, tokens, mask)
        engine.backward(loss)
        engine.step()
        return loss.detach()

    result = timed(step, args, device)
    result.update(params=n_params, trainable=n_params, engine="deepspeed zero2")
    del engine, optimizer, net
    return result


def row_torch(args, device: torch.device, checkpointing: bool, compiled: bool = False, packing: str | None = None) -> dict:
    """The same step without DeepSpeed: fp32 weights, bf16 autocast, AdamW, gradient clipping.
    packing None: full rows (no padding); "off" / "compute": variable-length utterances, padded / packed."""
    net = build_net(args, checkpointing, packing or "compute").to(device)
    if compiled:
        estimator_of(net).compile_layers()
    n_params = sum(p.numel() for p in net.parameters())
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01,
                                  fused=device.type == "cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tokens, mask = (batch if packing is None else varlen_batch)(args, net.cond_codebook_size, device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_of(net, tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    result = timed(step, args, device)
    real = float(mask.sum())
    result["tokens_per_s"] *= real / (args.batch * args.frames)  # real frames (the budget is filled up to rounding)
    result.update(params=n_params, trainable=n_params, utterances=int(mask.shape[0]), padding=1 - real / mask.numel(),
                  flops_per_step=training_flops(per_token_matmul_params(net), len(estimator_of(net).layers),
                                                estimator_of(net).hidden_size, mask.sum(1).cpu()),
                  engine=f"torch amp, fused AdamW{', compiled' if compiled else ''}"
                         f"{'' if packing is None else f', packing={packing}'}")
    del optimizer, net
    return result


def row_decode(args, device: torch.device) -> dict:
    """Fast stage-1 decoding (bf16 autocast, batched CFG), batch 1 and 16, eager and compiled; faithful fp32 once."""
    net = build_net(args, False).to(device).eval().requires_grad_(False)
    vocab = net.cond_codebook_size
    settings = DecodeConfig(n_timesteps=25, temp=0.9, filter_thres=0.98, cfg=2.5, rescale_cfg=0.75)
    prompt = torch.randint(0, vocab, (150,), generator=torch.Generator().manual_seed(2))
    out = {}

    def run(b, fast, bf16):
        noises = [UniformNoise(torch.Generator(device=device).manual_seed(7 + r)) for r in range(b)]
        _sync(device)
        t0 = time.perf_counter()
        ids = net.reverse_diffusion_rows([prompt] * b, [350] * b, settings, noises=noises,
                                         fast=FastDecoding(precision="bf16" if bf16 else "fp32") if fast else False)
        _sync(device)
        return time.perf_counter() - t0, torch.stack(ids)

    run(1, False, False)
    t_ref, ref = run(1, False, False)
    out["faithful_b1_s"] = t_ref
    for compiled in (False, True) if device.type == "cuda" else (False,):  # compiling on a few CPU cores takes minutes
        if compiled:
            estimator_of(net).compile_layers()
        for b in (1, 16):
            run(b, True, True)  # warm-up (and compile)
            t, ids = run(b, True, True)
            tag = f"fast{'_compiled' if compiled else ''}_b{b}"
            out[f"{tag}_s"] = t
            out[f"{tag}_rtf"] = t / (b * 350 / 50)  # seconds per second of generated audio (stage 1 only)
            out[f"{tag}_agree"] = (ids[:1] == ref).float().mean().item()
    out.update(params=sum(p.numel() for p in net.parameters()), trainable=0, engine="decode (stage 1)")
    return out


def row_decode_graphs(args, device: torch.device) -> dict:
    """Fast bf16 stage-1 decoding with shape buckets + CUDA graphs vs without; a 16-request manifest batched vs solo."""
    net = build_net(args, False).to(device).eval().requires_grad_(False)
    vocab = net.cond_codebook_size
    settings = DecodeConfig(n_timesteps=25, temp=0.9, filter_thres=0.98, cfg=2.5, rescale_cfg=0.75)
    g = torch.Generator().manual_seed(3)
    buckets = (256, 512, 1024, 2048)
    variants = {"eager": FastDecoding(precision="bf16"), "graphs": FastDecoding(precision="bf16", buckets=buckets)}
    out = {"buckets": list(buckets), "cuda_graphs": device.type == "cuda"}

    def run(prompts, targets, fast, seeds=None):
        seeds = seeds or [7 + r for r in range(len(prompts))]
        noises = [UniformNoise(torch.Generator(device=device).manual_seed(s)) for s in seeds]
        _sync(device)
        t0 = time.perf_counter()
        ids = net.reverse_diffusion_rows(prompts, targets, settings, noises=noises, fast=fast)
        _sync(device)
        return time.perf_counter() - t0, ids

    prompt = torch.randint(0, vocab, (150,), generator=g)
    ref = run([prompt], [350], False)[1][0]
    for name, fast in variants.items():
        for b in (1, 16):
            run([prompt] * b, [350] * b, fast)  # warm-up (captures the graphs)
            t, ids = run([prompt] * b, [350] * b, fast)
            out[f"{name}_b{b}_s"] = t
            out[f"{name}_b{b}_rtf"] = t / (b * 350 / 50)
            out[f"{name}_b{b}_agree"] = (ids[0] == ref).float().mean().item()
    prompts = [torch.randint(0, vocab, (int(n),), generator=g) for n in torch.randint(50, 151, (16,), generator=g)]
    targets = [int(n) for n in torch.randint(50, 401, (16,), generator=g)]
    fast = variants["graphs"]
    groups: dict[int, list[int]] = {}  # one batched decode per bucket of prompt + target (as the pipeline batches)
    for r in sorted(range(16), key=lambda r: prompts[r].numel() + targets[r]):
        groups.setdefault(bucket_length(prompts[r].numel() + targets[r], buckets), []).append(r)
    for _ in range(2):  # the first round warms up (one capture per shape), the second is timed
        solo = [run(prompts[r:r + 1], targets[r:r + 1], fast, [100 + r]) for r in range(16)]
        batched = [(rows, run([prompts[r] for r in rows], [targets[r] for r in rows], fast, [100 + r for r in rows]))
                   for rows in groups.values()]
    t_solo, t_batched = sum(t for t, _ in solo), sum(t for _, (t, _) in batched)
    same = torch.cat([ids[k] == solo[r][1][0] for rows, (_, ids) in batched for k, r in enumerate(rows)]).float().mean().item()
    out.update(manifest_solo_requests_per_s=16 / t_solo, manifest_batched_requests_per_s=16 / t_batched,
               manifest_speedup=t_solo / t_batched, manifest_agree_with_solo=same, manifest_batches=len(groups),
               params=sum(p.numel() for p in net.parameters()), trainable=0, engine="decode (stage 1), buckets + CUDA graphs")
    return out


def row_lora(args, device: torch.device) -> dict:
    try:
        from metis.checkpoints.lora import wrap_lora
    except ImportError as exn:
        return {"skipped": f"LoRA row needs peft and safetensors ({exn})"}
    net = build_net(args, checkpointing=False).to(device)
    n_params = sum(p.numel() for p in net.parameters())
    wrapped = wrap_lora(net, r=args.lora_r, trainable_modules=())
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tokens, mask = batch(args, net.cond_codebook_size, device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_of(wrapped, tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    result = timed(step, args, device)
    result.update(params=n_params + sum(p.numel() for p in trainable), trainable=sum(p.numel() for p in trainable),
                  engine="torch amp + peft lora")
    del wrapped, optimizer, net
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="20 timed steps, 3 warm-up steps per row")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (CPU dry run of the code paths)")
    ap.add_argument("--batch", type=int, default=10, help="sequences per GPU per step")
    ap.add_argument("--frames", type=int, default=1000, help="frames per sequence (batch x frames = tokens per GPU)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--lora-r", type=int, default=32)
    ap.add_argument("--rows", default="zero2,zero2_ckpt,lora_r32")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (for MFU)")
    ap.add_argument("--out", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--in-process", action="store_true",
                    help="run all rows in this process (default on CUDA: one subprocess per row, so that memory a "
                         "finished row leaves allocated, e.g. by DeepSpeed, does not count in the next row's peak)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 20, 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (use --device cpu --tiny for a dry run)", file=sys.stderr)
        return 2
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    peak = peak_tflops(device, args.peak_tflops)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "tokens_per_step": args.batch * args.frames, "dtype": args.dtype, "steps": args.steps, "peak_tflops": peak}
    print(json.dumps({"setup": info}), flush=True)
    rows = {}
    names = args.rows.split(",")
    if device.type == "cuda" and not args.in_process and len(names) > 1:
        for i, name in enumerate(names):  # one fresh process per row (see --in-process)
            t0 = time.perf_counter()
            env = dict(os.environ, MASTER_PORT=os.environ.get("MASTER_PORT", str(29561 + i)))
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "row.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv),
                       "--rows", name, "--out", str(out)]
                rc = subprocess.run(cmd, env=env).returncode
                r = json.loads(out.read_text())["rows"][name] if out.exists() else {"error": f"row process exit {rc}"}
            r["wall_s"] = time.perf_counter() - t0
            rows[name] = r
        names = []
    for name in names:
        t0 = time.perf_counter()
        runs = {"zero2": lambda: row_zero2(args, device, checkpointing=False),
                "zero2_ckpt": lambda: row_zero2(args, device, checkpointing=True),
                "lora_r32": lambda: row_lora(args, device),
                "torch": lambda: row_torch(args, device, checkpointing=False),
                "compiled": lambda: row_torch(args, device, checkpointing=False, compiled=True),
                "padded": lambda: row_torch(args, device, checkpointing=False, packing="off"),
                "packed": lambda: row_torch(args, device, checkpointing=False, packing="compute"),
                "decode": lambda: row_decode(args, device),
                "decode_graphs": lambda: row_decode_graphs(args, device)}
        if name not in runs:
            print(f"error: unknown row {name!r} ({', '.join(runs)})", file=sys.stderr)
            return 2
        try:
            r = runs[name]()
        except Exception as exn:  # e.g. out of memory: report it, keep the other rows
            r = {"error": f"{type(exn).__name__}: {str(exn)[:300]}"}
        if "tokens_per_s" in r and peak:
            r["mfu"] = 6 * r["params"] * r["tokens_per_s"] / (peak * 1e12)
            if "flops_per_step" in r:
                r["mfu_attn"] = r["flops_per_step"] / r["step_s"] / (peak * 1e12)
        r["wall_s"] = time.perf_counter() - t0
        rows[name] = r
        print(json.dumps({name: r}), flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{'row':<12} {'tokens/s':>10} {'step s':>8} {'peak GiB':>9} {'MFU':>6}  params (trainable)")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<12} failed: {r['error']}")
            continue
        if "skipped" in r:
            print(f"{name:<12} skipped: {r['skipped']}")
            continue
        if "tokens_per_s" not in r:
            print(f"{name:<12} " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)))
            continue
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        mfu += f" ({100 * r['mfu_attn']:.1f}% with attention)" if "mfu_attn" in r else ""
        print(f"{name:<12} {r['tokens_per_s']:>10.0f} {r['step_s']:>8.3f} {mem:>9} {mfu:>6}  "
              f"{r['params'] / 1e6:.1f}M ({r['trainable'] / 1e6:.2f}M)")
    if args.out:
        write_json(args.out, {"setup": info, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
