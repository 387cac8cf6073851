"""Fine-tuning Metis for a task (tts, vc, tse, se, l2s, omni): full or LoRA, with condition adapters.

    net = MetisStage1(ft_type=...)          the task's model (adapter, phone modules as the task needs)
        └─ load_init(net, init)              the base, strictly; the new modules may be absent from it
        └─ wrap_lora(net, r, α=2r)           LoRA on q,k,v,o,gate,up,down; adapter / phone modules trainable
    batch ──conditioner──> TaskInputs ──net──> masked-token loss

Under LoRA the frozen base never changes, so the Lightning checkpoints hold only the trainable
tensors (plus optimizer state and the base's sha256): `on_save_checkpoint` drops the frozen ones and
`on_load_checkpoint` requires the same base, checks the trainable keys strictly and puts the frozen
tensors back from the module before Lightning's strict load. Under DeepSpeed the checkpoint is a
folder DeepSpeed writes and restores itself (`TrainableOnlyCheckpoints` keeps the frozen tensors out
of it): the run record is checked the same way, and there is no `state_dict` to check.

`ExportFinetuned` writes the published files (`metis_{task}_lora_{r}.safetensors`,
`metis_{task}_lora_{r}_adapter.safetensors`) and a merged full checkpoint (`model.safetensors` +
`config.json`); under DeepSpeed from the fp32 weights gathered over all ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from peft import LoraModel
from torch import nn

from metis.checkpoints.deepspeed import gathered_state_dict
from metis.checkpoints.io import check_state_dict, load_into, read_safetensors, resolve, save_safetensors
from metis.checkpoints.lora import (ADAPTER_MODULE, TTS_TRAINABLE, adapter_state_dict, lora_state_dict,
                                    merged_state_dict, wrap_lora)
from metis.lightning.callbacks import ExportSafetensors, write_json_atomic
from metis.lightning.conditioning import ConditionBuilder, TaskInputs
from metis.lightning.masked_module import MaskedGenerativeModule
from metis.lightning.metrics import masked_token_loss
from metis.lightning.strategies import is_deepspeed

TASKS = ("tts", "vc", "tse", "se", "l2s", "omni")
BASE_FILE = "metis_base/model.safetensors"  # inside a folder laid out like amphion/metis
EXPORT_FILES = ("model.safetensors", "config.json")  # this project's export folder
ARCH_KEYS = ("hidden_size", "num_layers", "num_heads", "cond_codebook_size", "phone_vocab_size")
CKPT_KEY = "metis_finetune"  # what a fine-tuning checkpoint records about its run


# ------------------------------------------------------------------------------ initialisation

def new_modules(net: nn.Module) -> list[str]:
    """Submodules a fine-tune adds to the pre-trained base: the adapter and the phone modules."""
    names = []
    if getattr(net, ADAPTER_MODULE, None) is not None:
        names.append(ADAPTER_MODULE)
    if getattr(net, "phone_emb", None) is not None:
        names += list(TTS_TRAINABLE)
    return names


def resolve_init(init: str | os.PathLike) -> tuple[Path, dict | None]:
    """Find the base checkpoint named by `init`.

    Args:
        init: a `.safetensors` file; this project's export folder (`model.safetensors` + `config.json`);
            a folder laid out like amphion/metis (`metis_base/model.safetensors`); or a Hub repo id.
    Returns:
        (the file, its `config.json` as a dict when there is one beside it).
    Raises:
        FileNotFoundError / CheckpointNotFoundError naming what was looked for.
    """
    src = Path(os.fspath(init)).expanduser()
    if src.is_file():
        cfg = src.parent / "config.json"
        return src, json.loads(cfg.read_text()) if cfg.is_file() else None
    if src.is_dir():
        if (src / EXPORT_FILES[0]).is_file():
            cfg = src / EXPORT_FILES[1]
            return src / EXPORT_FILES[0], json.loads(cfg.read_text()) if cfg.is_file() else None
        if (src / BASE_FILE).is_file():
            return src / BASE_FILE, None
        raise FileNotFoundError(f"init={init}: the folder holds neither {EXPORT_FILES[0]} (+ {EXPORT_FILES[1]}, an export "
                                f"of this project) nor {BASE_FILE} (a folder laid out like amphion/metis)")
    looks_local = src.is_absolute() or str(init).startswith(".") or str(init).count("/") != 1 or src.suffix
    if looks_local:
        hint = ""
        if "outputs/demo/export" in str(init).replace(os.sep, "/"):
            hint = "; the demo fine-tunes start from the demo pre-training: run `python train.py` first (it writes outputs/demo/export/)"
        raise FileNotFoundError(f"init={init} does not exist (expected a .safetensors file, an export folder, "
                                f"a folder laid out like amphion/metis, or a repo id such as amphion/metis){hint}")
    return resolve(str(init), BASE_FILE), None


def load_init(net: nn.Module, init: str | os.PathLike | None) -> dict:
    """Load the base named by `init` into the plain `net`, strictly: every key of the file must be a key
    of `net` with its shape, and every key of `net` must be in the file except those of the modules the
    fine-tune adds (`new_modules`), which keep their fresh init (zero gate) when the file lacks them.

    Returns:
        {"init": str, "file": path or None, "new": [new module keys left at their init]}.
    """
    if init is None or str(init) in ("scratch", "none", "null", ""):
        return {"init": "scratch", "file": None, "new": []}
    path, config = resolve_init(init)
    if config is not None:
        bad = {k: (config[k], _arch_value(net, k)) for k in ARCH_KEYS
               if k in config and _arch_value(net, k) is not None and config[k] != _arch_value(net, k)}
        if bad:
            lines = ", ".join(f"{k}: {f} in the file's config vs {m} in model.net" for k, (f, m) in bad.items())
            raise ValueError(f"init={init}: {path.parent / 'config.json'} describes another architecture ({lines}); "
                             f"set model.net to match (e.g. model.net.hidden_size=...)")
    sd = read_safetensors(path)
    allow = [f"{name}.*" for name in new_modules(net)]
    load_into(net, sd, source=os.fspath(path), allow_missing=allow)
    own = net.state_dict()
    return {"init": str(init), "file": os.fspath(path), "new": sorted(k for k in own if k not in sd)}


def _arch_value(net: nn.Module, key: str):
    """The value of constructor argument `key` of a built MetisStage1 (None when it has no such part)."""
    layers = net.diff_estimator.layers
    if key == "num_layers":
        return len(layers)
    if key == "num_heads":
        return layers[0].self_attn.n_heads if len(layers) else None
    if key == "phone_vocab_size":
        return None if getattr(net, "phone_emb", None) is None else net.phone_emb.num_embeddings
    return getattr(net, key, None)


def load_adapter_file(net: nn.Module, path: str | os.PathLike) -> None:
    """Load a published adapter file (`model.cond_adapter.*`, or plain `cond_adapter.*`) strictly."""
    adapter = getattr(net, ADAPTER_MODULE, None)
    if adapter is None:
        raise ValueError(f"adapter_init={path} given but the model (ft_type={getattr(net, 'ft_type', None)!r}) has no {ADAPTER_MODULE}")
    sd = read_safetensors(path)
    for prefix in (f"model.{ADAPTER_MODULE}.", f"{ADAPTER_MODULE}."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
            break
    load_into(adapter, sd, source=os.fspath(path))


# ---------------------------------------------------------------------------- parameter counts

def describe_trainable(net: nn.Module) -> tuple[str, int, int]:
    """("LoRA r=32 + adapter: 33.8M of 759.8M trainable", trainable, total) for a plain or wrapped net."""
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    inner = net.model if isinstance(net, LoraModel) else net
    extras = []
    if getattr(inner, ADAPTER_MODULE, None) is not None:
        extras.append("adapter")
    if getattr(inner, "phone_emb", None) is not None:
        extras.append("phone modules")
    if isinstance(net, LoraModel):
        cfg = net.peft_config["default"]
        head = f"LoRA r={cfg.r}" + "".join(f" + {e}" for e in extras)
    else:
        head = "full fine-tune"
    return f"{head}: {trainable / 1e6:.1f}M of {total / 1e6:.1f}M trainable", trainable, total


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


# ---------------------------------------------------------------------------------------- module

class FinetuneModule(MaskedGenerativeModule):
    """Masked-token fine-tuning of a MetisStage1 for one task.

    Args:
        net: the plain task model (MetisStage1 with the task's ft_type / use_phone_cond / cond_dim).
        conditioner: batch -> TaskInputs (`metis.lightning.conditioning`).
        task: one of tts, vc, tse, se, l2s, omni (checked against the net and the checkpoints).
        init: the base checkpoint (see `resolve_init`), or "scratch" for random init.
        peft: {"method": "lora" | "full", "r", "alpha" (None: 2r), "dropout"}.
        features: tokenizer spec of the feature extractor (`metis.data.specs`, e.g. "semantic",
            "kmeans:data/demo/tokenizer"); loaded in `setup` on the training device. None for tasks
            whose conditions need no audio features (tts, l2s).
        adapter_init: a published adapter file to start the adapter from (default: new, zero gate).
        cond_seed: seed of the condition simulation (per step: seed, step and rank).
        optimizer, scheduler, weight_decay_embeddings, val_seed, kwargs: as MaskedGenerativeModule.
    """

    def __init__(self, net: nn.Module, conditioner: ConditionBuilder, optimizer: Callable, task: str,
                 init: str | None = "scratch", peft: Mapping | None = None, features: str | None = None,
                 adapter_init: str | None = None, cond_seed: int = 0, scheduler: Callable | None = None,
                 weight_decay_embeddings: bool = False, val_seed: int = 1234, **kwargs):
        # The base saves this frame's arguments as hparams, which must be plain values (the checkpoint
        # loads with weights_only=True): the conditioner object is held aside, peft made a dict.
        builder, conditioner = conditioner, None
        peft = _plain(peft) or {"method": "full"}
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler,
                         weight_decay_embeddings=weight_decay_embeddings, val_seed=val_seed, **kwargs)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        expected_ft = None if task == "tts" else task
        if getattr(net, "ft_type", None) != expected_ft:
            raise ValueError(f"task={task} needs model.net.ft_type={expected_ft!r}, got {getattr(net, 'ft_type', None)!r}")
        if task in ("tts", "omni") and not net.use_phone_cond:
            raise ValueError(f"task={task} needs model.net.use_phone_cond=true (the phone prefix)")
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
        if method == "lora":
            r = int(peft.get("r", 32))
            net = wrap_lora(net, r=r, alpha=peft.get("alpha"), dropout=float(peft.get("dropout", 0.01)),
                            trainable_modules=new_modules(net))
        else:
            net.requires_grad_(True)
        self.net = net
        self.summary, self.n_trainable, self.n_total = describe_trainable(net)
        self._base_sha256: str | None = None

    @property
    def is_lora(self) -> bool:
        return isinstance(self.net, LoraModel)

    @property
    def plain_net(self) -> nn.Module:
        return self.net.model if self.is_lora else self.net

    # ---- conditions --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.is_lora:
            self.base_sha256()  # now, while every rank holds the whole base (DeepSpeed ZeRO-3 partitions it later)
        if self.extractor is None and self.features_spec and self.conditioner.uses_features:
            from metis.data.specs import load_tokenizer

            self.extractor = load_tokenizer(self.features_spec, device=str(self.device), require=("features",))

    def build_inputs(self, batch: dict, seed: int, split: str) -> TaskInputs:
        """The batch's task inputs, simulated with a generator seeded by `seed`."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            inputs = self.conditioner(batch, self.extractor, generator, split)
        return inputs.to(self.device)

    def _train_seed(self) -> int:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        return (self.cond_seed * 1_000_003 + self.global_step) * 1_009 + rank

    # ---- one step ----------------------------------------------------------------------------
    def forward(self, inputs: TaskInputs):
        return self.net(**inputs.model_kwargs())

    def step_on(self, inputs: TaskInputs):
        out = self(inputs)
        loss, stats = masked_token_loss(out.logits, inputs.x0, out.final_mask)
        stats["mask_ratio"] = out.mask_prob.float().mean()
        stats["n_valid"] = inputs.x_mask.sum()
        for name, value in inputs.stats.items():
            stats[f"cond_{name}"] = torch.tensor(float(value))
        return loss, stats

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._pending = self.build_inputs(batch, self._train_seed(), "train")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._pending = self.build_inputs(batch, self.hparams.val_seed * 1_000_003 + batch_idx, "val")
        return super().validation_step(batch, batch_idx)

    def model_step(self, batch: dict):
        inputs = getattr(self, "_pending", None)
        self._pending = None
        if inputs is None:  # called outside training_step / validation_step
            inputs = self.build_inputs(batch, self.cond_seed, "train")
        return self.step_on(inputs)

    def on_validation_epoch_start(self) -> None:
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


# ---------------------------------------------------------------------------------------- export

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
            write_json_atomic(d / "finetune.json", {**module.run_record(), "global_step": trainer.global_step,
                                               "init_file": module.init_info.get("file")})
            if self.model_config is not None:
                write_json_atomic(d / "config.json", self.model_config)
            rank_zero_info(f"exported the fine-tuned model at step {trainer.global_step} to {d}: "
                           + ", ".join(p.name for p in paths.values()))
        self.last_path = paths["model"]
        self.written = paths
        return paths
