"""Fine-tune step throughput with the SE condition simulation on the training process vs in the
DataLoader workers (`metis.conditions.builders.ConditionStage`), side by side in one run.

    python benchmarks/bench_condition_stage.py                  # experiment=demo_se, 40 steps per mode
    python benchmarks/bench_condition_stage.py --steps 60 --workers 2 --threads 1

Needs the demo (python train.py: data/demo + outputs/demo/export). Each mode runs in a fresh process
on the same composed config (experiment=demo_se, LoRA r=16 on the demo model, demo corpus, max_tokens
2000, the SE degrader with noise, reverb, clipping, band-limiting); the only difference is where the
waveform simulation runs:
    training process   model.conditioner = the SE builder, data.conditions = null (simulated in
                       FinetuneModule.prepare_batch, as before the loader stage existed)
    loader workers     data.conditions = the SE builder (the recipe's default): the workers simulate,
                       the training process only computes the features and trains
A step's time is the interval between consecutive `on_train_batch_start` calls (data wait included),
the median over the steps after --warmup. Validation, checkpoints and exports are off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout's metis, not another installed copy


def run_mode(mode: str, args) -> dict:
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from metis.lightning.finetuning import finetune_once

    torch.set_num_threads(args.threads)
    overrides = ["experiment=demo_se", f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0",
                 "validate_before=false", "validate_after=false", "logger=none", "ckpt_path=null",
                 f"run_name=bench_condition_stage_{mode}_{os.getpid()}", f"data.num_workers={args.workers}",
                 f"paths.root_dir={ROOT}", "~callbacks.export", "~callbacks.model_checkpoint", "~callbacks.progress_bar"]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("finetune", overrides=overrides)
    if mode == "process":
        with open_dict(cfg):
            cfg.model.conditioner = cfg.data.conditions
            cfg.data.conditions = None

    times: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            times.append(time.perf_counter())

    import metis.lightning.training as training

    build = training.build_run

    def build_with_timer(c):
        run = build(c)
        run.trainer.callbacks.append(StepTimer())
        return run

    import metis.lightning.finetuning as finetuning

    finetuning.build_run = build_with_timer
    out = finetune_once(cfg)
    steps = [b - a for a, b in zip(times, times[1:])][args.warmup:]
    med = statistics.median(steps)
    frames = int(cfg.data.max_tokens)
    return {"mode": mode, "steps_timed": len(steps), "step_s": med, "steps_per_s": 1 / med,
            "max_frames_per_batch": frames, "global_step": out["global_step"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="step intervals left out of the median")
    p.add_argument("--workers", type=int, default=1, help="data.num_workers (the demo's default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--mode", choices=("process", "workers"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args.mode, args)), flush=True)
        return
    rows = []
    for mode in ("process", "workers"):
        cmd = [sys.executable, __file__, "--mode", mode, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--workers", str(args.workers), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        rows.append(json.loads(line[len("RESULT "):]))
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; workers={args.workers} "
          f"threads={args.threads} steps={args.steps} (median of {rows[0]['steps_timed']} step intervals)")
    print(f"{'conditions simulated in':<24} {'step (s)':>9} {'steps/s':>8}")
    for r in rows:
        label = "training process" if r["mode"] == "process" else "loader workers"
        print(f"{label:<24} {r['step_s']:>9.3f} {r['steps_per_s']:>8.2f}")
    print(f"speed-up: {rows[0]['step_s'] / rows[1]['step_s']:.2f}x")


if __name__ == "__main__":
    main()
