"""Strategy-aware glue: DeepSpeed runs with frozen weights (LoRA), and ZeRO-Offload optimizers.

Lightning's DeepSpeedStrategy writes every parameter of the module into each checkpoint, frozen
ones included: for a LoRA fine-tune of the 760M model that is the whole base model, every
interval. `TrainableOnlyCheckpoints` turns on DeepSpeed's `exclude_frozen_parameters` (the model
states then hold only the trainable tensors; the optimizer state holds only those anyway) and
loads non-strictly on resume, since the frozen weights come from the base checkpoint the module
loads when it is built. Non-DeepSpeed runs are left alone: there the module's own
`state_dict`/`on_save_checkpoint` decide what a `.ckpt` holds.

    callbacks:
      trainable_only:
        _target_: metis.lightning.strategies.TrainableOnlyCheckpoints
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info


def is_deepspeed(trainer: L.Trainer) -> bool:
    return isinstance(trainer.strategy, DeepSpeedStrategy)


def deepspeed_zero_stage(trainer: L.Trainer) -> int | None:
    """The ZeRO stage of a DeepSpeed run (0-3), None for other strategies."""
    if not is_deepspeed(trainer):
        return None
    return int(trainer.strategy.config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(trainer: L.Trainer) -> bool:
    """True for a DeepSpeed run whose optimizer state lives on the CPU (the *_offload presets)."""
    if not is_deepspeed(trainer):
        return False
    offload = trainer.strategy.config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


def optimizer_for_strategy(optimizer: torch.optim.Optimizer, trainer: L.Trainer | None) -> torch.optim.Optimizer:
    """DeepSpeed's ZeRO-Offload refuses torch optimizers (their step on the CPU is slow): a torch
    Adam/AdamW becomes `deepspeed.ops.adam.DeepSpeedCPUAdam` with the same parameter groups and
    hyperparameters. Anything else is returned unchanged."""
    if trainer is None or not offloads_optimizer(trainer) or type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return optimizer
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    d = optimizer.defaults
    groups = [{k: v for k, v in g.items() if k in ("params", "lr", "betas", "eps", "weight_decay")} for g in optimizer.param_groups]
    rank_zero_info(f"ZeRO-Offload: {type(optimizer).__name__} -> DeepSpeedCPUAdam (same groups and hyperparameters)")
    return DeepSpeedCPUAdam(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], weight_decay=d["weight_decay"],
                            adamw_mode=isinstance(optimizer, torch.optim.AdamW))


def frozen_parameter_count(module: L.LightningModule) -> tuple[int, int]:
    """(frozen, total) parameter element counts."""
    frozen = total = 0
    for p in module.parameters():
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()  # ZeRO-3 partitions: use the full size
        total += n
        frozen += 0 if p.requires_grad else n
    return frozen, total


class TrainableOnlyCheckpoints(L.Callback):
    """Under DeepSpeed with frozen parameters: checkpoints hold only the trainable tensors and their
    optimizer state, and resume loads them non-strictly over the frozen base weights."""

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if not is_deepspeed(trainer):
            return
        frozen, total = frozen_parameter_count(module)
        if not frozen:
            return
        trainer.strategy.exclude_frozen_parameters = True
        module.strict_loading = False
        rank_zero_info(f"DeepSpeed checkpoints hold the {total - frozen:,} trainable parameters only "
                       f"({frozen:,} frozen ones come from the base checkpoint on resume)")
