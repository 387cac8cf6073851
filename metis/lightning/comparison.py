"""What pre-training buys, measured fairly: the same fine-tuning data from the pre-trained base (LoRA +
adapter, and full) and from random init, the scratch arm trained to its best validation.

`finetune(cfg)` with `compare_scratch=true` runs the arms and `write_comparison` stores

    outputs/<run_name>/comparison.json   {"arms": {name: {"init", "peft", "finetune_frames", "total_frames",
                                          "steps", "best_step", "val_acc_top1", "val_loss",
                                          "val_acc_top1_cond_shuffled", ...}}, "baselines": {name: acc@1},
                                          "finetune_set_size": utterances, "seed": seed}
    outputs/<run_name>/learning_curve.png  held-out acc@1 per arm against fine-tuning frames, baselines dashed

Every arm is reported at its best validation by `compare.monitor` (`compare.mode`; the demo presets:
the highest `val/acc_top1`, the metric the comparison reports) and, beside it, at its lowest `val/loss`
(`at_best_val_loss`): on small sets the full arms overfit in loss long before they do in accuracy, so the
two selections can disagree. Every arm trains at least the fine-tuning steps and up to `compare.steps_factor` times them,
stopping after `compare.patience` validations without a better monitored value, so no arm is starved; the pre-trained and the scratch full arms train with one
recipe (`compare.full_lr`, `compare.full_warmup_steps`). `finetune_frames` are the valid target frames
the arm trained on up to that step; `total_frames` adds the frames the base was pre-trained on (the
`metis.train_frames` its export records).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from safetensors import safe_open

from metis.atomic import atomic_write, write_json
from metis.lightning.baselines import baseline_accuracies

# what comparisons written before `selected_by` existed selected by (and compare.* without monitor/mode)
LOSS_SELECTION = {"monitor": "val/loss", "mode": "min"}
ARM_METRICS = ("val/acc_top1", "val/acc_top10", "val/loss", "val/acc_top1_cond_shuffled", "val/acc_top1_cond_zero")


def arm_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The runs of a comparison: pre-trained with the configured peft, pre-trained full (when the
    configured peft is LoRA), and scratch (full). Every arm gets the same budget, up to `steps_factor` x
    trainer.max_steps, early-stopped after `patience` validations without a better `monitor`; the two
    full arms share one recipe (`full_lr`, `full_warmup_steps`, the adapter at the same lr), so they
    differ only in their init. No arm stops before trainer.max_steps."""
    method = cfg.peft.get("method", "full")
    arms = {f"pretrained_{method}": ("pretrained", method)}
    if method != "full":
        arms["pretrained_full"] = ("pretrained", "full")
    arms["scratch"] = ("scratch", "full")
    cmp = cfg.get("compare") or {}
    monitor, mode = monitor_of(cfg)
    out = {}
    for name, (init, peft) in arms.items():
        c = cfg.copy()
        with open_dict(c):
            c.compare_scratch = False
            c.run_name = f"{cfg.run_name}_{name}"
            c.validate_before = True
            c.validate_after = True
            c.trainer.max_steps = int(cfg.trainer.max_steps) * int(cmp.get("steps_factor", 1))
            # never stopped before the fine-tuning steps: LoRA's held-out acc@1 dips for a few hundred steps
            # while its adapter starts to read the condition, and early stopping on it would end the arm there
            c.trainer.min_steps = int(cfg.trainer.max_steps)
            c.trainer.min_epochs = 0  # else Lightning sets 1 with min_steps, and a one-epoch run never stops early
            if cmp.get("patience"):
                c.callbacks.early_stopping = {
                    "_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": monitor,
                    "mode": mode, "patience": int(cmp.patience), "check_finite": True}
            if peft != method:
                c.peft = OmegaConf.merge(c.peft, {"method": peft})
                c.model.peft = c.peft
            if peft == "full":
                if cmp.get("full_lr") is not None:
                    c.model.optimizer.lr = float(cmp.full_lr)
                if cmp.get("full_warmup_steps") is not None:
                    c.model.scheduler.warmup_steps = int(cmp.full_warmup_steps)
                c.model.new_module_lr_scale = 1.0  # one lr for every parameter, as scratch (where nothing is new)
            if init == "scratch":
                c.init = "scratch"
                c.model.init = "scratch"
        OmegaConf.resolve(c)
        out[name] = c
    return out


def pretrain_frames(init: str | None) -> int | None:
    """The training frames recorded in the base's export (`metis.train_frames`), None when unknown."""
    if not init or str(init) in ("scratch", "none", "null", ""):
        return 0
    from metis.lightning.finetune_init import resolve_init

    try:
        path, _ = resolve_init(init)
        with safe_open(os.fspath(path), framework="pt") as f:
            value = (f.metadata() or {}).get("metis.train_frames")
    except (OSError, ValueError):
        return None
    return int(value) if value is not None else None


def monitor_of(cfg: DictConfig) -> tuple[str, str]:
    """(metric, "min" | "max") that selects each arm's best validation and early-stops it."""
    cmp = cfg.get("compare") or {}
    monitor = str(cmp.get("monitor") or LOSS_SELECTION["monitor"])
    mode = str(cmp.get("mode") or LOSS_SELECTION["mode"])
    if mode not in ("min", "max"):
        raise ValueError(f"compare.mode must be 'min' or 'max', got {mode!r}")
    return monitor, mode


def best_record(records: list[dict], monitor: str = "val/loss", mode: str = "min") -> dict:
    """The validation with the lowest (`mode="min"`) or highest `monitor` (the first on ties); {} without any."""
    scored = [r for r in records if monitor in r]
    if not scored:
        return {}
    return (min if mode == "min" else max)(scored, key=lambda r: r[monitor])


def arm_summary(run: dict, init_label: str, peft: str, init: str | None,
                monitor: str = "val/loss", mode: str = "min") -> dict:
    records = run["module"].val_records
    best = best_record(records, monitor, mode)
    base = pretrain_frames(init if init_label == "pretrained" else None)
    frames = int(best.get("frames", 0))
    out = {"init": init_label, "peft": peft, "finetune_frames": frames,
           "total_frames": None if base is None else frames + base, "pretrain_frames": base,
           "steps": int(run["global_step"]), "best_step": int(best.get("step", 0))}
    for key in ARM_METRICS:
        if key in best:
            out[key.replace("/", "_")] = best[key]
    by_loss = best_record(records)
    out["at_best_val_loss"] = {"best_step": int(by_loss.get("step", 0)), "finetune_frames": int(by_loss.get("frames", 0)),
                               **{k.replace("/", "_"): by_loss[k] for k in ARM_METRICS if k in by_loss}}
    out["curve"] = [{"step": r["step"], "frames": r["frames"], "val_acc_top1": r.get("val/acc_top1"),
                     "val_loss": r.get("val/loss")} for r in records]
    return out


def comparison(runs: dict[str, dict], arms: dict[str, DictConfig], cfg: DictConfig, set_size: int | None) -> dict:
    """The comparison.json document of finished runs (`finetune_once` results) and their configs."""
    monitor, mode = monitor_of(cfg)
    out_arms = {}
    for name, run in runs.items():
        c = arms[name]
        out_arms[name] = arm_summary(run, "scratch" if str(c.init) == "scratch" else "pretrained",
                                     c.peft.get("method", "full"), str(c.init), monitor, mode)
    # the baselines need no model: the same masks in every arm and validation; taken from the first arm's
    # last validation, whose unigram has counted all of its training tokens
    first = next(iter(runs.values()))
    records = first["module"].val_records
    baselines = baseline_accuracies(records[-1]) if records else {}
    return {"arms": out_arms, "baselines": baselines, "finetune_set_size": set_size, "seed": int(cfg.seed),
            "task": str(cfg.model.task), "selected_by": {"monitor": monitor, "mode": mode}}


def write_comparison(doc: dict, out_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """comparison.json and learning_curve.png in `out_dir` (atomic writes)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "comparison.json", doc)
    return d / "comparison.json", plot_learning_curves(doc, d / "learning_curve.png")


def plot_learning_curves(doc: dict, path: Path) -> Path | None:
    """Held-out acc@1 of every arm against its fine-tuning frames, the baselines as dashed lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, arm in doc["arms"].items():
        pts = [(p["frames"], p["val_acc_top1"]) for p in arm["curve"] if p["val_acc_top1"] is not None]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, marker="o", label=f"{name} (best {arm.get('val_acc_top1', float('nan')):.3f})")
    for i, (name, acc) in enumerate(doc["baselines"].items()):
        ax.axhline(acc, linestyle="--", linewidth=1, color=f"C{len(doc['arms']) + i}", label=f"baseline {name} ({acc:.3f})")
    ax.set_xlabel("fine-tuning frames (50 Hz)")
    ax.set_ylabel("held-out masked acc@1")
    ax.set_title(f"{doc.get('task', '')}: {doc.get('finetune_set_size')} fine-tuning utterances, seed {doc.get('seed')}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def table(doc: dict) -> str:
    """The comparison as printed at the end of a run."""
    sel = doc.get("selected_by", LOSS_SELECTION)
    head = (f"{'arm':<16} {'steps':>6} {'best':>5} {'ft frames':>10} {'total frames':>13} {'acc@1':>7} "
            f"{'loss':>7} {'acc@1 cond shuf':>16} {'acc@1 cond 0':>13} | {'at min loss: step':>17} {'acc@1':>7} {'loss':>7}")
    lines = [f"every arm at its {'lowest' if sel['mode'] == 'min' else 'highest'} {sel['monitor']} "
             "(right: at its lowest val/loss)", head, "-" * len(head)]
    nan = float("nan")
    for name, a in doc["arms"].items():
        total = "?" if a["total_frames"] is None else str(a["total_frames"])
        lo = a.get("at_best_val_loss", {})
        lines.append(f"{name:<16} {a['steps']:>6} {a['best_step']:>5} {a['finetune_frames']:>10} {total:>13} "
                     f"{a.get('val_acc_top1', nan):>7.4f} {a.get('val_loss', nan):>7.4f} "
                     f"{a.get('val_acc_top1_cond_shuffled', nan):>16.4f} {a.get('val_acc_top1_cond_zero', nan):>13.4f} | "
                     f"{lo.get('best_step', -1):>17} {lo.get('val_acc_top1', nan):>7.4f} {lo.get('val_loss', nan):>7.4f}")
    for name, acc in doc["baselines"].items():
        lines.append(f"baseline {name:<17} {'':>36} {acc:>7.4f}")
    best = max(doc["arms"].items(), key=lambda kv: kv[1].get("val_acc_top1", -1))
    losers = [f"{n} ({a.get('val_acc_top1', float('nan')):.4f})" for n, a in doc["arms"].items()
              if any(a.get("val_acc_top1", -1) <= v for v in doc["baselines"].values())
              or a.get("val_acc_top1", -1) <= a.get("val_acc_top1_cond_shuffled", -1)]
    lines.append(f"best held-out acc@1: {best[0]}")
    if losers:
        lines.append("WARNING: not above every baseline and its shuffled-condition score: " + ", ".join(losers))
    return "\n".join(lines)
