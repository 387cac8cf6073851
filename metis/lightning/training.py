"""The pre-training recipe: instantiate data, module, callbacks, loggers and trainer from a Hydra config,
fit (fresh or resumed), and report where the checkpoint and the exported weights are.

`train.py` wraps `train(cfg)` with `@hydra.main`; tests call `train(cfg)` on a composed config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from metis.lightning import baselines
from metis.lightning.callbacks import ExportSafetensors
from metis.lightning.fault_tolerance import newest_loadable, remove_stale_temporaries
from metis.lightning.loggers import tidy_console_logging
from metis.threads import set_threads


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """`null`: fresh run (refuses to mix with an existing run's checkpoints); `last`: resume, which must
    exist; `auto`: resume when `last.ckpt` exists, else fresh; anything else: a checkpoint file.
    `last`/`auto` take `last.ckpt` if it is complete, else the newest complete `*.ckpt` (a file or a
    DeepSpeed folder) in `checkpoint_dir`."""
    last = checkpoint_dir / "last.ckpt"
    remove_stale_temporaries(checkpoint_dir)
    if ckpt_path in (None, "null", "none"):
        if last.exists():
            raise FileExistsError(
                f"{checkpoint_dir} already holds a run's checkpoints: resume it with ckpt_path=last, "
                f"or start elsewhere with run_name=<new name>")
        return None
    # auto/last resume the newest checkpoint that loads: a `last.ckpt` left truncated by a kill during
    # its write is skipped for the previous complete one (step*.ckpt), so nothing more than one
    # checkpoint interval is lost.
    if ckpt_path == "auto":
        found = newest_loadable(checkpoint_dir) if checkpoint_dir.is_dir() else None
        return str(found) if found else None
    if ckpt_path == "last":
        if not last.exists():
            raise FileNotFoundError(f"ckpt_path=last but there is no {last}: nothing to resume (start with ckpt_path=null)")
        found = newest_loadable(checkpoint_dir)
        if found is None:
            raise FileNotFoundError(f"ckpt_path=last but no checkpoint in {checkpoint_dir} is complete ({last} is corrupt): "
                                    f"nothing to resume")
        return str(found)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    return ckpt_path


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers), skipping nulls."""
    if not group:
        return []
    out = []
    for name, node in group.items():
        if node is not None and "_target_" in node:
            rank_zero_info(f"instantiating {name}: <{node._target_}>")
            out.append(instantiate(node))
    return out


@dataclass
class Run:
    """Everything a recipe fits: built from the config by `build_run`."""

    datamodule: L.LightningDataModule
    module: L.LightningModule
    callbacks: list
    trainer: L.Trainer
    checkpoint_dir: Path
    ckpt_path: str | None  # the checkpoint to resume from, or None for a fresh run


def build_run(cfg: DictConfig) -> Run:
    """Threads and seed, then data, module, callbacks, loggers and trainer from the config (shared by
    the pre-training and fine-tuning recipes)."""
    tidy_console_logging()
    rank_zero_info(f"torch CPU threads: {set_threads(cfg.get('num_threads', 'auto'))} (num_threads={cfg.get('num_threads', 'auto')})")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    rank_zero_info(f"instantiating data <{cfg.data._target_}>")
    datamodule = instantiate(cfg.data, _convert_="all")  # plain containers in its hparams: checkpoints load with weights_only=True
    rank_zero_info(f"instantiating model <{cfg.model._target_}> with net <{cfg.model.net._target_}>")
    module = instantiate(cfg.model)
    module.net_config = OmegaConf.to_container(cfg.model.net, resolve=True)  # checkpoints carry it

    callbacks = instantiate_group(cfg.get("callbacks"))
    for cb in callbacks:
        if isinstance(cb, ExportSafetensors) and cb.model_config is None:
            cb.model_config = OmegaConf.to_container(cfg.model.net, resolve=True)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    checkpoint_dir = Path(cfg.paths.output_dir) / "checkpoints"
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), checkpoint_dir)
    if ckpt_path:
        rank_zero_info(f"resuming from {ckpt_path}")
    return Run(datamodule, module, callbacks, trainer, checkpoint_dir, ckpt_path)


def run_paths(run: Run) -> dict:
    """Final metrics and where the run's checkpoint and export are."""
    last = run.checkpoint_dir / "last.ckpt"
    export = next((cb.last_path for cb in run.callbacks if isinstance(cb, ExportSafetensors)), None)
    return {
        "metrics": {k: float(v) for k, v in run.trainer.callback_metrics.items() if v.numel() == 1},
        "global_step": run.trainer.global_step,
        "checkpoint_dir": str(run.checkpoint_dir),
        "last_checkpoint": str(last) if last.exists() else None,
        "exported": str(export) if export else None,
    }


def train(cfg: DictConfig) -> dict:
    """Fit the configured module; returns the final metrics and the run's paths."""
    run = build_run(cfg)
    rank_zero_info(f"net parameters: {sum(p.numel() for p in run.module.net.parameters()) / 1e6:.2f}M")
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.ckpt_path)
    result = {**run_paths(run), "val_history": list(run.module.val_history)}
    if run.trainer.is_global_zero:
        print_summary(result)
    return result


def print_summary(result: dict) -> None:
    lines = [f"finished at step {result['global_step']}"]
    if result["val_history"]:
        h = result["val_history"]
        lines.append(f"validation loss: first {h[0]:.4f} -> last {h[-1]:.4f} ({len(h)} evaluations)")
    if "val/acc_top1" in result["metrics"]:
        lines.append(baselines.report(result["metrics"]))
    if result["last_checkpoint"]:
        lines.append(f"checkpoint (resume with ckpt_path=last): {result['last_checkpoint']}")
    if result["exported"]:
        lines.append(f"exported weights (published layout):   {result['exported']}")
    print("\n".join(lines), flush=True)
