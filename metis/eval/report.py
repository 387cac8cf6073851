"""Results of a run: per-utterance CSV, a summary table (CSV + markdown, per subset), plots and wandb."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from metis.atomic import atomic_write, write_json, write_text
from metis.eval.published import published_markdown

log = logging.getLogger(__name__)

# display order of summary columns; keys not listed follow in alphabetical order
ORDER = ["wer", "wer_corpus", "cer", "cer_corpus", "sim_wavlm", "sim_resemblyzer", "dnsmos_sig", "dnsmos_bak",
         "dnsmos_ovrl", "dnsmos_p808", "nisqa", "utmos", "distillmos", "pesq_wb", "pesq_nb", "stoi", "estoi",
         "si_sdr", "sdr"]
_COUNT_SUFFIXES = ("_errors", "_ref_len")
_RATE_KEYS = ("wer", "cer", "wer_corpus", "cer_corpus")


def metric_keys(rows: list[dict]) -> list[str]:
    """Numeric metric columns (no counts, no text), output keys before ``input_`` keys, in ORDER."""
    keys = {k for r in rows for k, v in r.items() if isinstance(v, float) and k != "seconds"
            and not k.endswith(_COUNT_SUFFIXES)}
    for r in rows:  # corpus-level error rates come from counts
        for base in ("wer", "cer", "input_wer", "input_cer"):
            if f"{base}_errors" in r:
                keys.add(f"{base}_corpus")

    def rank(k: str):
        base = k.removeprefix("input_")
        return (k.startswith("input_"), ORDER.index(base) if base in ORDER else len(ORDER), base)

    return sorted(keys, key=rank)


def _finite(values) -> list[float]:
    return [x for x in values if isinstance(x, float) and math.isfinite(x)]


def _mean(values: list[float]) -> float:
    """Mean of the finite values (NaN: not scored; inf: a degenerate score, counted in the report)."""
    v = _finite(values)
    return float(np.mean(v)) if v else float("nan")


def summarize(rows: list[dict]) -> list[dict]:
    """One summary row per subset (plus ``all`` when there are several): mean of each metric, corpus
    WER/CER (total errors over total reference length), counts and audio hours."""
    keys = metric_keys(rows)
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    groups = [(s, [r for r in rows if r["subset"] == s]) for s in subsets]
    if len(subsets) > 1:
        groups.append(("all", rows))
    out = []
    for name, rs in groups:
        s = {"subset": name, "n": len(rs), "failed": sum(1 for r in rs if r.get("errors")),
             "hours": round(sum(r["seconds"] for r in rs) / 3600, 4)}
        for k in keys:
            if k.endswith("_corpus"):
                base = k.removesuffix("_corpus")
                err = sum(r.get(f"{base}_errors", 0.0) for r in rs)
                n = sum(r.get(f"{base}_ref_len", 0.0) for r in rs)
                s[k] = err / n if n else float("nan")
            else:
                s[k] = _mean([r.get(k, float("nan")) for r in rs])
        out.append(s)
    return out


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k, "")) for k in columns})


def _scale(key: str, task: str) -> int:
    """Display scale as in the papers: WER/CER in percent, L2S SIM on a 0-100 scale."""
    base = key.removeprefix("input_")
    return 100 if base in _RATE_KEYS or (base.startswith("sim") and task == "l2s") else 1


def _display(key: str, value: float, task: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    scale = _scale(key, task)
    return f"{scale * value:.2f}" if scale != 1 else f"{value:.3f}"


def _header(key: str, task: str) -> str:
    base = key.removeprefix("input_")
    label = base.upper() + " (%)" if base in _RATE_KEYS else base + (" (×100)" if base.startswith("sim")
                                                                      and task == "l2s" else "")
    return ("input " if key.startswith("input_") else "") + label


def markdown(summary: list[dict], *, task: str, metrics: list[str], notes: list[str], stats: dict,
             protocol: str | None = None) -> str:
    all_keys = [k for k in summary[0] if k not in ("subset", "n", "failed", "hours")]
    keys = [k for k in all_keys if not k.startswith("input_")]
    lines = [f"# Evaluation: {task}", "", "| subset | n | not fully scored | hours | "
             + " | ".join(_header(k, task) for k in keys) + " |", "|---|---|---|---|" + "---|" * len(keys)]
    for s in summary:
        lines.append(f"| {s['subset']} | {s['n']} | {s['failed']} | {s['hours']} | "
                     + " | ".join(_display(k, s[k], task) for k in keys) + " |")
    paired = [k for k in keys if f"input_{k}" in all_keys]
    if paired:
        lines += ["", "Before (unprocessed input: noisy speech / mixture) and after (output), per subset:", "",
                  "| subset | metric | input | output | change |", "|---|---|---|---|---|"]
        for s in summary:
            for k in paired:
                before, after = s[f"input_{k}"], s[k]
                change = f"{_scale(k, task) * (after - before):+.3f}" if not math.isnan(after - before) else "–"
                lines.append(f"| {s['subset']} | {_header(k, task)} | {_display(k, before, task)} | "
                             f"{_display(k, after, task)} | {change} |")
    published = published_markdown(protocol, [s["subset"] for s in summary])
    if published:
        lines += ["", published.rstrip("\n")]
    lines += ["", "Metrics:"] + [f"- {d}" for d in metrics]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    fails = {k: v for k, v in stats.get("failures", {}).items() if v}
    if fails:
        lines += ["", "Failures (utterances not scored, per metric; `unreadable`: items whose audio could not be "
                      "read; `<reason>_audio`: items whose audio the validity check refused (clipped flat, constant, "
                      "NaN, silent, empty); see the `errors` column of the CSV): " + ", ".join(f"{k}: {v}" for k, v in fails.items())]
    nonfinite = {k: v for k, v in stats.get("nonfinite", {}).items() if v}
    if nonfinite:
        lines += ["", "Non-finite scores (left out of the means and plots): "
                  + ", ".join(f"{k}: {v}" for k, v in nonfinite.items())]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out_dir: Path, *, task: str) -> list[Path]:
    """Histograms of each metric and, where inputs were scored, before/after bars. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in metric_keys(rows) if not k.startswith("input_") and not k.endswith("_corpus")]
    paths = []
    if keys:
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
        for ax, k in zip(axes.flat, keys, strict=False):
            v = _finite(r.get(k) for r in rows)  # an inf would give matplotlib an infinite bin range
            ax.hist(v, bins=min(30, max(5, len(v))), color="tab:blue", alpha=0.8)
            ax.set_title(f"{k} (mean {np.mean(v):.3f}, n={len(v)})" if v else k, fontsize=9)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"{task}: per-utterance metric distributions")
        fig.tight_layout()
        paths.append(out_dir / "distributions.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    pairs = [k for k in keys if any(f"input_{k}" in r for r in rows)]
    if pairs:
        cols = min(6, len(pairs))
        nrows = math.ceil(len(pairs) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 3.0 * nrows), squeeze=False)
        for ax in list(axes.flat)[len(pairs):]:
            ax.axis("off")
        for ax, k in zip(axes.flat, pairs, strict=False):
            before = _mean([r.get(f"input_{k}", float("nan")) for r in rows])
            after = _mean([r.get(k, float("nan")) for r in rows])
            ax.bar(["input", "output"], [before, after], color=["tab:gray", "tab:green"])
            ax.set_title(k, fontsize=9)
            for x, y in enumerate((before, after)):
                if not math.isnan(y):
                    ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=8)
        fig.suptitle(f"{task}: before / after (means)")
        fig.tight_layout()
        paths.append(out_dir / "before_after.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_report(rows: list[dict], out_dir: str | Path, *, task: str, metrics: list[str], notes: list[str],
                 stats: dict, settings: dict, make_plots: bool = True, protocol: str | None = None
                 ) -> dict[str, Path]:
    """Write ``per_utterance.csv``, ``results.csv``, ``results.md``, ``run.json`` and plots; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError("no rows to report")
    summary = summarize(rows)
    keys = metric_keys(rows)
    text_cols = sorted({k for r in rows for k, v in r.items() if isinstance(v, str)} - {"id", "subset"})
    counts = sorted({k for r in rows for k in r if k.endswith(_COUNT_SUFFIXES)})
    paths = {"per_utterance": out / "per_utterance.csv", "results_csv": out / "results.csv",
             "results_md": out / "results.md", "run": out / "run.json"}
    _write_csv(paths["per_utterance"], rows, ["id", "subset", "seconds"]
               + [k for k in keys if not k.endswith("_corpus")] + counts + text_cols)
    _write_csv(paths["results_csv"], summary, list(summary[0]))
    write_text(paths["results_md"], markdown(summary, task=task, metrics=metrics, notes=notes, stats=stats,
                                             protocol=protocol))
    write_json(paths["run"], {"task": task, "metrics": metrics, "notes": notes, "stats": stats,
                              "settings": settings, "summary": summary}, default=str)
    if make_plots:
        for p in plot(rows, out / "plots", task=task):
            paths[p.stem] = p
    return paths


def log_wandb(paths: dict[str, Path], summary: list[dict], *, task: str, project: str, run_name: str | None,
              config: dict) -> None:
    """Log the summary, the per-utterance table and the plots to wandb (honours WANDB_MODE)."""
    import wandb

    run = wandb.init(project=project, name=run_name, job_type="eval", config=config, reinit="finish_previous")
    try:
        for s in summary:
            run.summary.update({f"eval/{task}/{s['subset']}/{k}": v for k, v in s.items()
                                if isinstance(v, (int, float)) and k != "subset"})
        with open(paths["per_utterance"], newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        run.log({f"eval/{task}/per_utterance": wandb.Table(columns=rows[0], data=rows[1:])})
        images = {f"eval/{task}/{name}": wandb.Image(str(p)) for name, p in paths.items() if p.suffix == ".png"}
        if images:
            run.log(images)
    finally:
        run.finish()
