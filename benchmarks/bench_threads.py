"""The demo fine-tune with num_threads=auto against torch's default thread count, on this machine as it is.

    python benchmarks/bench_threads.py                 # after `python train.py` (needs outputs/demo/export)
    python benchmarks/bench_threads.py --steps 30

Each setting runs `finetune.py experiment=demo_se` for --steps steps in its own process (no validation),
one after the other; prints wall seconds, steps/s, the thread count each process used, the machine's
usable cores and the load average before each run (the numbers only mean something with the load).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metis.threads import choose_threads, usable_cores  # noqa: E402


def run(setting: str, steps: int, root: str) -> tuple[float, str]:
    args = [sys.executable, "finetune.py", "experiment=demo_se", f"num_threads={setting}", f"trainer.max_steps={steps}",
            "validate_before=false", "validate_after=false", "trainer.limit_val_batches=0",
            f"run_name=bench_threads_{setting}", f"hydra.run.dir={root}/{setting}", f"paths.output_dir={root}/{setting}",
            "ckpt_path=null", "callbacks.model_checkpoint.every_n_train_steps=100000"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # torch's own default
    start = time.perf_counter()
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"num_threads={setting} failed:\n{res.stderr[-3000:]}")
    m = re.search(r"torch CPU threads: (\d+)", res.stdout + res.stderr)
    return wall, m.group(1) if m else "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--settings", default="auto,null", help="comma-separated num_threads values")
    a = p.parse_args()
    print(f"usable cores {usable_cores()}, auto now -> {choose_threads('auto')} threads")
    print(f"{'num_threads':>12} {'threads':>8} {'load before':>12} {'wall s':>8} {'steps/s':>8}")
    with tempfile.TemporaryDirectory() as root:
        for setting in a.settings.split(","):
            load = os.getloadavg()[0]
            wall, used = run(setting, a.steps, root)
            print(f"{setting:>12} {used:>8} {load:>12.1f} {wall:>8.1f} {a.steps / wall:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
