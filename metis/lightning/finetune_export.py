"""Export of a fine-tuned model: the merged full model and, for LoRA runs, the published split files."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from metis.atomic import write_json
from metis.checkpoints.deepspeed import gathered_state_dict
from metis.checkpoints.io import save_safetensors
from metis.checkpoints.lora import ADAPTER_MODULE, adapter_state_dict, lora_state_dict, merged_state_dict
from metis.lightning.callbacks import ExportSafetensors
from metis.lightning.finetune_module import FinetuneModule
from metis.lightning.strategies import is_deepspeed


class ExportFinetuned(ExportSafetensors):
    """Write the fine-tuned model at the end of training (and every N steps when asked).

    Files in `dirpath`:
        model.safetensors + config.json     the merged full model (plain MetisStage1 keys; LoRA folded in)
        finetune.json                       task, method, init, rank
    and for LoRA runs whose model has an adapter, in the published format:
        metis_{task}_lora_{r}.safetensors           model.…lora_{A,B}.default.weight
        metis_{task}_lora_{r}_adapter.safetensors   model.cond_adapter.*
    which reload with `metis.checkpoints.lora.load_split(<init file>, adapter, lora, config, r, alpha)`.
    All files are cut from one full state dict of the net: under DeepSpeed (any ZeRO stage) the fp32
    master weights gathered over all ranks (a collective: every rank calls `export`), else the net's
    own. All writes are atomic.

    Args:
        dirpath: output folder.
        every_n_train_steps: also export during training (0: at the end only).
        model_config: the net's constructor config (the Hydra `model.net` node), stored as config.json.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0, model_config: dict | None = None):
        super().__init__(dirpath, every_n_train_steps, model_config)
        self.written: dict[str, Path] = {}

    def export(self, trainer: L.Trainer, module: FinetuneModule) -> dict[str, Path]:
        d = self.dirpath
        meta = {"global_step": str(trainer.global_step), "metis.task": module.task}
        paths = {"model": d / "model.safetensors"}
        net = module.net
        # ZeRO-3 ranks hold shards of the parameters: everything below reads this gathered state only.
        state = gathered_state_dict(net) if is_deepspeed(trainer) else None
        if module.is_lora:
            cfg = net.peft_config["default"]
            stem = f"metis_{module.task}_lora_{int(cfg.r)}"
            paths["lora"] = d / f"{stem}.safetensors"
            if getattr(net.model, ADAPTER_MODULE, None) is not None:
                paths["adapter"] = d / f"{stem}_adapter.safetensors"
        if trainer.is_global_zero:
            d.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach() for k, v in net.state_dict().items()} if state is None else state
            if module.is_lora:
                lora_meta = {**meta, "metis.lora": json.dumps({"r": int(cfg.r), "lora_alpha": float(cfg.lora_alpha)})}
                save_safetensors(lora_state_dict(net, state), paths["lora"], lora_meta)
                if "adapter" in paths:
                    save_safetensors(adapter_state_dict(net, state), paths["adapter"], lora_meta)
                merged = merged_state_dict(net, state)
            else:
                merged = state
            save_safetensors(merged, paths["model"], meta)
            write_json(d / "finetune.json", {**module.run_record(), "global_step": trainer.global_step,
                                               "init_file": module.init_info.get("file")})
            if self.model_config is not None:
                write_json(d / "config.json", self.model_config)
            rank_zero_info(f"exported the fine-tuned model at step {trainer.global_step} to {d}: "
                           + ", ".join(p.name for p in paths.values()))
        self.last_path = paths["model"]
        self.written = paths
        return paths
