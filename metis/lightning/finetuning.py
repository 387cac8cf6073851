"""The fine-tuning recipe: `finetune(cfg)` instantiates data, module (base loaded, LoRA wrapped),
callbacks, loggers and trainer from a Hydra config, fits, and reports the held-out masked-token
accuracy before and after. `compare_scratch=true` runs the same fine-tune twice, from `init` and
from random init, and prints both rows: what pre-training buys.

`finetune.py` wraps `finetune(cfg)` with `@hydra.main`; tests call `finetune(cfg)` on a composed config.
"""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from metis.lightning.finetune_export import ExportFinetuned
from metis.lightning.training import build_run, run_paths


def _validate(trainer: L.Trainer, module, datamodule) -> dict[str, float]:
    if not trainer.limit_val_batches:
        return {}
    out = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (out[0] if out else {}).items()}


def finetune_once(cfg: DictConfig) -> dict:
    """One fine-tuning run; returns metrics, held-out accuracy before/after, and the written paths."""
    run = build_run(cfg)
    module, trainer, datamodule = run.module, run.trainer, run.datamodule
    print(f"{cfg.model.task}: {module.summary} (init={cfg.init})", flush=True)
    before = {}
    if not run.ckpt_path and cfg.get("validate_before"):
        before = _validate(trainer, module, datamodule)
    trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path)
    after = _validate(trainer, module, datamodule) if cfg.get("validate_after") else {}

    export = next((cb for cb in run.callbacks if isinstance(cb, ExportFinetuned)), None)
    result = {
        **run_paths(run),
        "task": cfg.model.task, "init": str(cfg.init), "summary": module.summary,
        "trainable": module.n_trainable, "total": module.n_total, "before": before, "after": after,
        "exported": {k: str(v) for k, v in export.written.items()} if export else {},
        "module": module,
    }
    if trainer.is_global_zero:
        lines = [f"finished at step {trainer.global_step}: {module.summary}"]
        if before.get("val/acc_top1") is not None:
            lines.append(f"held-out masked-token accuracy before: {before['val/acc_top1']:.4f}")
        if after.get("val/acc_top1") is not None:
            lines.append(f"held-out masked-token accuracy after:  {after['val/acc_top1']:.4f} (val/loss {after['val/loss']:.4f})")
        if result["last_checkpoint"]:
            lines.append(f"checkpoint (resume with ckpt_path=last): {result['last_checkpoint']}")
        for name, path in result["exported"].items():
            lines.append(f"exported {name}: {path}")
        print("\n".join(lines), flush=True)
    return result


def finetune(cfg: DictConfig) -> dict:
    """`finetune_once(cfg)`, or with `compare_scratch` both the pre-trained and a from-scratch start
    (same data, steps and seed; the scratch run's `peft` is `compare_scratch_peft`), printed as a table."""
    if not cfg.get("compare_scratch"):
        return finetune_once(cfg)
    runs = {}
    for label in ("pretrained", "scratch"):
        c = cfg.copy()
        with open_dict(c):
            c.compare_scratch = False
            c.run_name = f"{cfg.run_name}_{label}"
            c.validate_before = True
            c.validate_after = True
            if label == "scratch":
                c.init = "scratch"
                c.model.init = "scratch"
                if cfg.get("compare_scratch_peft"):
                    c.peft = OmegaConf.merge(c.peft, {"method": cfg.compare_scratch_peft})
                    c.model.peft = c.peft
        OmegaConf.resolve(c)
        runs[label] = finetune_once(c)
    print(comparison_table(runs), flush=True)
    return {"runs": runs, "table": comparison_table(runs)}


def comparison_table(runs: dict[str, dict]) -> str:
    head = f"{'start':<11} {'trainable':>22} {'steps':>6} {'acc@1 before':>13} {'acc@1 after':>12} {'acc@10 after':>13} {'val loss':>9}"
    lines = [head, "-" * len(head)]
    for label, r in runs.items():
        b, a = r["before"], r["after"]
        lines.append(f"{label:<11} {r['summary'].split(':')[0][:22]:>22} {r['global_step']:>6} "
                     f"{b.get('val/acc_top1', float('nan')):>13.4f} {a.get('val/acc_top1', float('nan')):>12.4f} "
                     f"{a.get('val/acc_top10', float('nan')):>13.4f} {a.get('val/loss', float('nan')):>9.4f}")
    return "\n".join(lines)
