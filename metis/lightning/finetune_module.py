"""Fine-tuning Metis for a task of the registry (`metis.tasks`): full or LoRA, with condition adapters.

    net = MetisStage1(ft_type=...)          the task's model (adapter, phone modules as the task needs)
        └─ load_init(net, init)              the base, strictly; the new modules may be absent from it
        └─ wrap_lora(net, r, α=2r)           LoRA on q,k,v,o,gate,up,down; adapter / phone modules trainable
    loader worker: batch ──ConditionStage (data.conditions)──> batch["task_inputs"] (condition waveforms)
    prepare_batch:  task_inputs ──featurize (extractor)──> TaskInputs ──net──> masked-token loss

Code by job: `finetune_init` (which base, loaded how), `trainable` (parameter counts), this module,
`finetune_export` (the exported files).

Under LoRA the frozen base never changes, so the Lightning checkpoints hold only the trainable
tensors (plus optimizer state and the base's sha256): `on_save_checkpoint` drops the frozen ones and
`on_load_checkpoint` requires the same base, checks the trainable keys strictly and puts the frozen
tensors back from the module before Lightning's strict load. Under DeepSpeed the checkpoint is a
folder DeepSpeed writes and restores itself (`TrainableOnlyCheckpoints` keeps the frozen tensors out
of it): the run record is checked the same way, and there is no `state_dict` to check.

`ExportFinetuned` (`finetune_export`) writes the published files (`metis_{task}_lora_{r}.safetensors`,
`metis_{task}_lora_{r}_adapter.safetensors`) and a merged full checkpoint (`model.safetensors` +
`config.json`); under DeepSpeed from the fp32 weights gathered over all ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from peft import LoraModel
from torch import nn

from metis import tasks as registry
from metis.checkpoints.io import check_state_dict
from metis.checkpoints.lora import ADAPTER_MODULE, wrap_lora
from metis.conditions.builders import ConditionBuilder, TaskInputs, featurize
from metis.lightning.finetune_init import load_adapter_file, load_init, new_modules
from metis.lightning.baselines import condition_tokens, shuffled_condition
from metis.lightning.masked_module import MaskedGenerativeModule
from metis.lightning.metrics import masked_token_loss
from metis.lightning.trainable import describe_trainable

CKPT_KEY = "metis_finetune"  # what a fine-tuning checkpoint records about its run


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def check_net(task: str, net: nn.Module) -> None:
    """The net is the model the registry's `task` needs (adapter, ft_type, phone prefix), else a ValueError."""
    try:
        spec = registry.get(task)
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None
    ft_type = getattr(net, "ft_type", None)
    has_adapter = getattr(net, ADAPTER_MODULE, None) is not None
    if has_adapter != spec.adapter or (spec.adapter and ft_type != spec.ft_type):
        want = repr(spec.ft_type) if spec.adapter else "null"
        raise ValueError(f"task={task} needs model.net.ft_type={want}, got {ft_type!r}")
    if spec.phones and not net.use_phone_cond:
        raise ValueError(f"task={task} needs model.net.use_phone_cond=true (the phone prefix)")


# ---------------------------------------------------------------------------------------- module

class FinetuneModule(MaskedGenerativeModule):
    """Masked-token fine-tuning of a MetisStage1 for one task.

    Args:
        net: the plain task model (MetisStage1 with the task's ft_type / use_phone_cond / cond_dim).
        conditioner: a condition builder (`metis.conditions.builders`) that simulates the conditions
            here, for batches that arrive without `task_inputs`; None when the loader simulates them
            (the recipe: `data.conditions`).
        task: a task of the registry (`metis.tasks`; checked against the net and the checkpoints).
        init: the base checkpoint (see `resolve_init`), or "scratch" for random init.
        peft: {"method": "lora" | "full", "r", "alpha" (None: 2r), "dropout"}.
        features: tokenizer spec of the feature extractor (`metis.data.specs`, e.g. "semantic",
            "kmeans:data/demo/tokenizer"); loaded in `setup` on the training device. None for tasks
            whose conditions need no audio features (tts, l2s).
        adapter_init: a published adapter file to start the adapter from (default: new, zero gate).
        new_module_lr_scale: the modules the fine-tune adds (the adapter, the phone modules) train at this
            multiple of the optimizer's lr (1: the released recipes). A fresh zero-gate adapter on a trained
            base gets a gradient only through its gate; in a short run at the base's lr the gate stays
            near 0 and the condition unused (docs/finetune.md, "The demo fine-tunes").
        cond_seed: seed of the simulation done here (per step: seed, step and rank).
        optimizer, scheduler, weight_decay_embeddings, val_seed, kwargs: as MaskedGenerativeModule.
    """

    def __init__(self, net: nn.Module, conditioner: ConditionBuilder | None, optimizer: Callable, task: str,
                 init: str | None = "scratch", peft: Mapping | None = None, features: str | None = None,
                 adapter_init: str | None = None, cond_seed: int = 0, scheduler: Callable | None = None,
                 weight_decay_embeddings: bool = False, val_seed: int = 1234, new_module_lr_scale: float = 1.0,
                 **kwargs):
        # The base saves this frame's arguments as hparams, which must be plain values (the checkpoint
        # loads with weights_only=True): the conditioner object is held aside, peft made a dict.
        builder, conditioner = conditioner, None
        peft = _plain(peft) or {"method": "full"}
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler,
                         weight_decay_embeddings=weight_decay_embeddings, val_seed=val_seed, **kwargs)
        check_net(task, net)
        method = peft.get("method", "full")
        if method not in ("lora", "full"):
            raise ValueError(f"peft.method must be 'lora' or 'full', got {method!r}")
        self.task = task
        self.peft = peft
        self.conditioner = builder
        self.features_spec = features
        self.extractor = None
        self.cond_seed = int(cond_seed)
        is_meta = any(p.device.type == "meta" for p in net.parameters())
        self.init_info = {"init": str(init), "file": None, "new": []} if is_meta else load_init(net, init)
        if adapter_init:
            load_adapter_file(net, adapter_init)
        self._new_modules = new_modules(net)
        if method == "lora":
            r = int(peft.get("r", 32))
            net = wrap_lora(net, r=r, alpha=peft.get("alpha"), dropout=float(peft.get("dropout", 0.01)),
                            trainable_modules=new_modules(net))
        else:
            net.requires_grad_(True)
        self.net = net
        self.summary, self.n_trainable, self.n_total = describe_trainable(net)
        self._base_sha256: str | None = None
        self._val_index = 0
        self._ablation_donor: tuple[torch.Tensor, torch.Tensor] | None = None

    def lr_scale(self, name: str) -> float:
        """`new_module_lr_scale` for the parameters of the added modules (LoRA prefixes its names)."""
        dotted = f".{name}"
        if any(f".{m}." in dotted for m in self._new_modules):
            return float(self.hparams.new_module_lr_scale)
        return 1.0

    @property
    def is_lora(self) -> bool:
        return isinstance(self.net, LoraModel)

    @property
    def plain_net(self) -> nn.Module:
        return self.net.model if self.is_lora else self.net

    # ---- conditions ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.is_lora:
            self.base_sha256()  # now, while every rank holds the whole base (DeepSpeed ZeRO-3 partitions it later)
        wants = self.conditioner.uses_features if self.conditioner is not None else registry.get(self.task).features
        if self.extractor is None and self.features_spec and wants:
            from metis.data.specs import load_tokenizer

            self.extractor = load_tokenizer(self.features_spec, device=str(self.device), require=("features",))

    def build_inputs(self, batch: dict, seed: int, split: str) -> TaskInputs:
        """The batch's task inputs, simulated here with a generator seeded by `seed`."""
        if self.conditioner is None:
            raise ValueError(f"the batch carries no simulated conditions ('task_inputs', from data.conditions) and "
                             f"the module has no conditioner to simulate them (model.conditioner); keys: {sorted(batch)}")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            inputs = self.conditioner(batch, self.extractor, generator, split)
        return inputs.to(self.device)

    def prepare_batch(self, batch: dict, split: str) -> TaskInputs:
        """Loader batch -> TaskInputs on the device: the conditions the loader simulated
        (`batch["task_inputs"]`) with their features, or simulated here (seeded by seed/step/rank for
        training, by val_seed and the batch's index for validation)."""
        if isinstance(batch, TaskInputs):  # already prepared (validation_step keeps it for the ablation)
            return batch
        inputs = batch.get("task_inputs") if isinstance(batch, Mapping) else None
        if inputs is None:
            if split == "train":
                seed = self._train_seed()
            else:
                seed = self.hparams.val_seed * 1_000_003 + self._val_index
                self._val_index += 1
            return self.build_inputs(batch, seed, split)
        with torch.no_grad():
            return featurize(inputs, self.extractor).to(self.device)

    def _train_seed(self) -> int:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        return (self.cond_seed * 1_000_003 + self.global_step) * 1_009 + rank

    # ---- one step ----------------------------------------------------------------------------
    def forward(self, inputs: TaskInputs):
        return self.net(**inputs.model_kwargs())

    def step_on(self, inputs: TaskInputs, baselines: bool = False):
        """Loss and stats of the net on `inputs`; with `baselines`, also every trivial predictor scored
        on the same masks (`metis.lightning.baselines`)."""
        out = self(inputs)
        loss, stats = masked_token_loss(out.logits, inputs.x0, out.final_mask)
        stats["mask_ratio"] = out.mask_prob.float().mean()
        stats["n_valid"] = inputs.x_mask.sum()
        phones = 0 if inputs.phone_id is None else (inputs.phone_mask.sum(1) if inputs.phone_mask is not None else inputs.phone_id.shape[1])
        stats["seq_lens"] = inputs.x_mask.sum(1) + phones
        for name, value in inputs.stats.items():
            stats[f"cond_{name}"] = torch.tensor(float(value))
        if baselines and self.baselines is not None:
            stats.update(self.baselines.score(inputs.x0, out.final_mask, inputs.x_mask, self.condition_tokens(inputs)))
        return loss, stats

    def condition_tokens(self, inputs: TaskInputs) -> torch.Tensor | None:
        """The condition's own answer: tokens of the audio the condition was computed on (SE: the
        degraded input, TSE: [prompt; mixture], VC: [prompt; source]), aligned to x0; None without audio."""
        if inputs.cond_wavs is None or self.extractor is None or not hasattr(self.extractor, "encode"):
            return None
        lengths = [int(n) for n in inputs.x_mask.sum(1).tolist()]
        return condition_tokens(self.extractor, inputs.cond_wavs, lengths).to(inputs.x0.device)

    def model_step(self, batch: TaskInputs | dict):
        inputs = batch if isinstance(batch, TaskInputs) else self.prepare_batch(batch, "train")
        if self.training and self.baselines is not None:
            self.baselines.observe(inputs.x0, inputs.x_mask)
        return self.step_on(inputs, baselines=not self.training)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        inputs = self.prepare_batch(batch, "val")
        super().validation_step(inputs, batch_idx)
        self.condition_ablation(inputs, batch_idx)

    def condition_ablation(self, inputs: TaskInputs, batch_idx: int) -> None:
        """Score the batch again, on the same masks, with the condition of another utterance of the batch
        (`val/acc_top1_cond_shuffled`) and with a zero condition (`val/acc_top1_cond_zero`): a model
        that uses its condition loses accuracy on both. Every batch is scored, a batch of one row with
        the previous batch's condition (`shuffled_condition`), so both average over the frames
        `val/acc_top1` does."""
        if inputs.finetune_cond is None:
            return
        donor, self._ablation_donor = self._ablation_donor, (inputs.finetune_cond, inputs.x_mask)
        for name, cond in (("cond_shuffled", shuffled_condition(inputs.finetune_cond, inputs.x_mask, donor)),
                           ("cond_zero", torch.zeros_like(inputs.finetune_cond))):
            with self.val_rng(batch_idx):
                _, stats = self.step_on(replace(inputs, finetune_cond=cond))
            n = int(stats["n_masked"].clamp(min=1))
            self.log(f"val/acc_top1_{name}", stats["acc_top1"].float(), sync_dist=True, batch_size=n)

    def on_validation_epoch_start(self) -> None:
        self._val_index = 0
        self._ablation_donor = None  # every evaluation ablates the same way
        if self.conditioner is not None:
            self.conditioner.reset("val")

    # ---- checkpoints: trainable tensors only under LoRA ---------------------------------------
    def trainable_keys(self) -> set[str]:
        return {f"net.{n}" for n, p in self.net.named_parameters() if p.requires_grad}

    def base_sha256(self) -> str:
        """sha256 over the frozen tensors (names, dtypes, shapes, bytes): identifies the base of a LoRA run."""
        if self._base_sha256 is None:
            h = hashlib.sha256()
            for name, p in sorted(self.net.named_parameters()):
                if not p.requires_grad:
                    if hasattr(p, "ds_id"):  # a ZeRO-3 parameter: this rank holds a shard at most
                        raise RuntimeError(f"base_sha256: {name} is partitioned by DeepSpeed ZeRO-3; the hash is taken "
                                           f"in setup(), before the strategy partitions the model")
                    t = p.detach().cpu().contiguous()
                    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._base_sha256 = h.hexdigest()
        return self._base_sha256

    def run_record(self) -> dict:
        rec = {"task": self.task, "method": "lora" if self.is_lora else "full", "init": self.init_info["init"]}
        if self.is_lora:
            cfg = self.net.peft_config["default"]
            rec.update(r=int(cfg.r), alpha=float(cfg.lora_alpha), base_sha256=self.base_sha256())
        return rec

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CKPT_KEY] = self.run_record()
        if self.is_lora:
            keep = self.trainable_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        source = str(getattr(self._trainer, "ckpt_path", None) or "<checkpoint>") if self._trainer is not None else "<checkpoint>"
        saved = checkpoint.get(CKPT_KEY)
        if saved is None:
            raise ValueError(f"{source} is not a fine-tuning checkpoint (no {CKPT_KEY!r} record): resume it with train.py, "
                             f"or start this fine-tune from its weights with init=<exported folder>")
        mine = self.run_record()
        for key in ("task", "method", "r", "alpha"):
            if saved.get(key) != mine.get(key):
                raise ValueError(f"{source} was written by a run with {key}={saved.get(key)!r}, this run has {key}={mine.get(key)!r}")
        if not self.is_lora:
            return
        if saved["base_sha256"] != mine["base_sha256"]:
            raise ValueError(f"{source} holds LoRA tensors trained on another base (sha256 {saved['base_sha256'][:12]}… from "
                             f"init={saved['init']}); this run's base is init={mine['init']} (sha256 {mine['base_sha256'][:12]}…)")
        if "state_dict" not in checkpoint:  # a DeepSpeed checkpoint: the engine has restored the tensors itself
            return
        sd = checkpoint["state_dict"]
        check_state_dict({k: v.shape for k, v in self.state_dict().items() if k in self.trainable_keys()}, sd, source=source,
                         note="a LoRA checkpoint holds exactly the trainable tensors")
        full = {k: v for k, v in self.state_dict().items()}
        full.update(sd)
        checkpoint["state_dict"] = full
