"""Strategy-aware glue for runs with frozen weights (LoRA) and for exporting under DeepSpeed.

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
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info


def is_deepspeed(trainer: L.Trainer) -> bool:
    return isinstance(trainer.strategy, DeepSpeedStrategy)


def deepspeed_zero_stage(trainer: L.Trainer) -> int | None:
    """The ZeRO stage of a DeepSpeed run (0-3), None for other strategies."""
    if not is_deepspeed(trainer):
        return None
    return int(trainer.strategy.config.get("zero_optimization", {}).get("stage", 0))


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
