"""The fine-tuning recipe: `finetune(cfg)` instantiates data, module (base loaded, LoRA wrapped),
callbacks, loggers and trainer from a Hydra config, fits, and reports the held-out masked-token
accuracy before and after, beside the trivial baselines and the condition ablations.
`compare_scratch=true` runs the fair pre-training comparison of `metis.lightning.comparison`.

`finetune.py` wraps `finetune(cfg)` with `@hydra.main`; tests call `finetune(cfg)` on a composed config.
"""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig

from metis.lightning import baselines
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
            lines.append(baselines.report(after))
        if result["last_checkpoint"]:
            lines.append(f"checkpoint (resume with ckpt_path=last): {result['last_checkpoint']}")
        for name, path in result["exported"].items():
            lines.append(f"exported {name}: {path}")
        print("\n".join(lines), flush=True)
    return result


def finetune(cfg: DictConfig) -> dict:
    """`finetune_once(cfg)`, or with `compare_scratch` the arms of `metis.lightning.comparison` (the
    pre-trained base fine-tuned with LoRA and in full, and from scratch to its best validation) on the
    same data and seed, written to `outputs/<run_name>/comparison.json` + `learning_curve.png`."""
    if not cfg.get("compare_scratch"):
        return finetune_once(cfg)
    from metis.lightning import comparison as C

    arms = C.arm_configs(cfg)
    runs = {name: finetune_once(c) for name, c in arms.items()}
    datamodule = runs[next(iter(runs))]["module"].trainer.datamodule
    set_size = datamodule.train_size() if hasattr(datamodule, "train_size") else None
    doc = C.comparison(runs, arms, cfg, set_size)
    json_path, png = C.write_comparison(doc, cfg.paths.output_dir)
    table = C.table(doc)
    print(table, flush=True)
    print(f"comparison: {json_path}" + (f", learning curves: {png}" if png else ""), flush=True)
    return {"runs": runs, "table": table, "comparison": doc, "comparison_path": str(json_path)}
