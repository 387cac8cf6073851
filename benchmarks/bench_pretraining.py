"""The demo's pre-training comparison at several fine-tuning set sizes and seeds, side by side.

    python train.py                                            # the pre-trained base (outputs/demo/export)
    python benchmarks/bench_pretraining.py --experiment demo_se --shards 1 6 --seeds 0 1 [--jobs 2] [-- key=value ...]
    python benchmarks/bench_pretraining.py --read demo_se demo_tse     # the table of finished comparisons

Each (set size, seed) is one `python finetune.py experiment=<experiment> compare_scratch=true
data.max_train_shards=<k> seed=<s>` (k task shards of 25 utterances); its comparison.json is read back
and every arm printed with the baselines. Extra Hydra overrides after `--` go to every run. The table
is also written to outputs/<experiment>_sweep.json. The runs start together, when the load average
does not yet show them, so each gets `num_threads=<usable cores // --jobs>` unless `--` sets one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from metis.lightning.comparison import LOSS_SELECTION  # noqa: E402
from metis.threads import usable_cores  # noqa: E402


def run(experiment: str, shards: int, seed: int, extra: list[str], log_dir: Path) -> dict:
    name = f"{experiment}_n{shards}_s{seed}"
    cmd = [sys.executable, str(ROOT / "finetune.py"), f"experiment={experiment}", "compare_scratch=true",
           f"data.max_train_shards={shards}", f"seed={seed}", f"run_name={name}", "ckpt_path=null", *extra]
    t0 = time.time()
    log = log_dir / f"{name}.log"
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=os.environ).returncode
    if rc:
        raise SystemExit(f"{name} failed (exit {rc}); see {log}")
    doc = json.loads((ROOT / "outputs" / name / "comparison.json").read_text())
    doc["wall_s"] = round(time.time() - t0, 1)
    return doc


def thread_share(extra: list[str], jobs: int) -> list[str]:
    """`extra` with `num_threads=<usable cores // jobs>` added unless it sets num_threads already."""
    if any(e.split("=", 1)[0].lstrip("+") == "num_threads" for e in extra):
        return extra
    return [*extra, f"num_threads={max(1, usable_cores() // max(1, jobs))}"]


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="demo_se")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 6])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each uses num_threads threads)")
    p.add_argument("--read", nargs="+", default=None, metavar="RUN_NAME",
                   help="run nothing: print the table of these finished runs' outputs/<RUN_NAME>/comparison.json")
    args = p.parse_args(argv)
    if args.read:
        print_table([json.loads((ROOT / "outputs" / n / "comparison.json").read_text()) for n in args.read])
        return
    log_dir = ROOT / "outputs" / f"{args.experiment}_sweep_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    grid = [(k, s) for k in args.shards for s in args.seeds]
    extra = thread_share(extra, min(args.jobs, len(grid)))
    with ThreadPoolExecutor(args.jobs) as ex:
        docs = list(ex.map(lambda ks: run(args.experiment, ks[0], ks[1], extra, log_dir), grid))
    print_table(docs)
    out = ROOT / "outputs" / f"{args.experiment}_sweep.json"
    out.write_text(json.dumps(docs, indent=2))
    print(f"written: {out}")


def print_table(docs: list[dict]) -> None:
    head = (f"{'set':>4} {'seed':>4} {'arm':<16} {'steps':>5} {'best':>5} {'ft frames':>10} {'total frames':>13} "
            f"{'acc@1':>7} {'loss':>7} {'shuffled':>8} {'zero':>7} | {'min-loss step':>13} {'acc@1':>7} {'loss':>7}")
    print(head)
    print("-" * len(head))
    for doc in docs:
        sel = doc.get("selected_by", LOSS_SELECTION)
        print(f"{doc['finetune_set_size']:>4} {doc['seed']:>4} every arm at its {sel['mode']} {sel['monitor']} "
              "(right: at its lowest val/loss)")
        for name, a in doc["arms"].items():
            total = "?" if a["total_frames"] is None else a["total_frames"]
            lo = a.get("at_best_val_loss", {})  # older comparisons selected by val/loss and have none
            print(f"{doc['finetune_set_size']:>4} {doc['seed']:>4} {name:<16} {a['steps']:>5} {a['best_step']:>5} "
                  f"{a['finetune_frames']:>10} {total:>13} {a.get('val_acc_top1', float('nan')):>7.4f} "
                  f"{a.get('val_loss', float('nan')):>7.4f} {a.get('val_acc_top1_cond_shuffled', float('nan')):>8.4f} "
                  f"{a.get('val_acc_top1_cond_zero', float('nan')):>7.4f} | {lo.get('best_step', -1):>13} "
                  f"{lo.get('val_acc_top1', float('nan')):>7.4f} {lo.get('val_loss', float('nan')):>7.4f}")
        wall = f"   ({doc['wall_s']:.0f} s)" if "wall_s" in doc else ""
        print(f"{'':>4} {'':>4} baselines: " + ", ".join(f"{k} {v:.4f}" for k, v in doc["baselines"].items()) + wall)


if __name__ == "__main__":
    main()
