"""LoRA glue around HF peft, producing and consuming the published Metis LoRA/adapter files.

The published fine-tunes (se, tse: r = 32; vc.json: r = 16; α = 2r, dropout 0.01) come as three files:

    metis_base/model.safetensors              plain MetisStage1 keys (no cond_adapter)
    metis_<task>/metis_<task>_lora_<r>.safetensors          model.diff_estimator.layers.{i}.<target>.lora_{A,B}.default.weight
    metis_<task>/metis_<task>_lora_<r>_adapter.safetensors  model.cond_adapter.*

`model.` is the attribute under which `peft.LoraModel` keeps the wrapped module, and `default` is
peft's adapter name; A is [r, in], B is [out, r]. Merging gives W' = W + (α/r)·B·A per target.

Unlike the reference (docs/reference.md Q12, Q13), every load here is strict and the adapter (and,
for TTS, the phone modules) stay trainable under LoRA.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from peft import LoraConfig, LoraModel
from peft.tuners.lora import LoraLayer
from torch import nn

from metis.checkpoints.io import CheckpointMismatchError, check_state_dict, load_into, read_safetensors

LoraTarget = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_TARGETS: tuple[LoraTarget, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_NAME = "default"  # peft's adapter name; part of every published LoRA key
WRAPPED_PREFIX = "model."  # LoraModel keeps the wrapped module as `.model`
ADAPTER_MODULE = "cond_adapter"
TTS_TRAINABLE = ("phone_emb", "diff_estimator.cond_mlp")  # new text modules of a TTS fine-tune
LORA_DROPOUT = 0.01

StateDictSource = str | os.PathLike | Mapping[str, torch.Tensor]


def _inner(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, LoraModel) else model


def _require_lora(model: nn.Module) -> LoraModel:
    if not isinstance(model, LoraModel):
        raise TypeError(f"expected a peft LoraModel (from wrap_lora), got {type(model).__name__}")
    return model


def wrap_lora(model: nn.Module, r: int = 32, alpha: float | None = None, dropout: float = LORA_DROPOUT,
              trainable_modules: Iterable[str] | None = None) -> LoraModel:
    """Wrap `model` (a MetisStage1) in peft.LoraModel on the 7 projections of every estimator layer.

    The wrapped model's state-dict keys are the published ones (`model.…q_proj.base_layer.weight`,
    `model.…q_proj.lora_A.default.weight`, …). peft freezes everything but the LoRA tensors; the
    modules named in `trainable_modules` are then unfrozen again.

    Args:
        model: the module to wrap (modified in place: its Linear targets become peft LoRA layers).
        r: LoRA rank. alpha: LoRA α; None means 2r, as in every released config.
        dropout: dropout on the LoRA branch input (0.01 in the released configs).
        trainable_modules: submodule names (as in `model.named_modules()`) to keep trainable. None
            means `cond_adapter` when the model has one: the released adapter files were trained,
            though plain LoraModel freezes them (docs/reference.md Q13). Pass TTS_TRAINABLE (+ "cond_adapter") for a
            TTS fine-tune whose text modules are new; pass () for plain LoraModel behaviour.
    Returns:
        The peft LoraModel (forward calls go to the wrapped model).
    """
    if isinstance(model, LoraModel):
        raise TypeError("model is already a LoraModel")
    if trainable_modules is None:
        trainable_modules = (ADAPTER_MODULE,) if getattr(model, ADAPTER_MODULE, None) is not None else ()
    trainable_modules = tuple(trainable_modules)
    modules = dict(model.named_modules())
    unknown = [name for name in trainable_modules if modules.get(name) is None]
    if unknown:
        raise ValueError(f"trainable_modules {unknown} are not submodules of {type(model).__name__}")
    config = LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout,
                        target_modules=list(LORA_TARGETS), bias="none")
    wrapped = LoraModel(model, config, ADAPTER_NAME)
    for name in trainable_modules:
        modules[name].requires_grad_(True)
    return wrapped


def lora_state_dict(wrapped: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The published LoRA file: every `lora_A`/`lora_B` tensor, keys `model.….lora_{A,B}.default.weight`.

    `state`: the wrapped model's full state dict to read instead of its own (e.g. gathered from the
    ranks of a DeepSpeed run); default `wrapped.state_dict()`.
    """
    sd = _require_lora(wrapped).state_dict() if state is None else state
    return {k: v.detach() for k, v in sd.items() if ".lora_" in k}


def adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The published adapter file: `{"model.cond_adapter.<name>": tensor}` of a plain or wrapped model.

    `state`: the model's full state dict to read instead of its own (keys as `model.state_dict()`).
    """
    inner = _inner(model)
    adapter = getattr(inner, ADAPTER_MODULE, None)
    if adapter is None:
        raise ValueError(f"{type(inner).__name__} has no {ADAPTER_MODULE} (built with an ft_type without adapter?)")
    prefix = f"{WRAPPED_PREFIX}{ADAPTER_MODULE}."
    if state is None:
        return {prefix + k: v.detach() for k, v in adapter.state_dict().items()}
    own = f"{WRAPPED_PREFIX if isinstance(model, LoraModel) else ''}{ADAPTER_MODULE}."
    out = {prefix + k[len(own):]: v.detach() for k, v in state.items() if k.startswith(own)}
    if not out:
        raise KeyError(f"state holds no {own}* key (first keys: {', '.join(list(state)[:5])})")
    return out


def merged_state_dict(wrapped: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Plain-model state dict with the active LoRA folded in: W + (α/r)·B·A for each target.

    Same values as `merge_and_unload().state_dict()`, but `wrapped` is left as it was, so training
    can go on. Only the tensors of `state` are read (the layers give their scaling α/r), so a full
    state dict gathered from DeepSpeed ranks merges without touching ZeRO-3's partitioned parameters.

    Args:
        wrapped: the peft LoraModel (from wrap_lora).
        state: its full state dict (`wrapped.state_dict()` keys); default `wrapped.state_dict()`.
    """
    lora = _require_lora(wrapped)
    sd = lora.state_dict() if state is None else state
    deltas = {}
    for name, module in lora.model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if module.merged:
            raise ValueError(f"{name}: the LoRA is merged into the base layer already; merged_state_dict expects an unmerged model")
        for adapter_name in module.active_adapters:
            if adapter_name not in module.lora_A:
                continue
            a = sd[f"{WRAPPED_PREFIX}{name}.lora_A.{adapter_name}.weight"].float()
            b = sd[f"{WRAPPED_PREFIX}{name}.lora_B.{adapter_name}.weight"].float()
            delta = (b @ a) * module.scaling[adapter_name]  # peft's get_delta_weight for a Linear
            if module.fan_in_fan_out:
                delta = delta.T
            deltas[f"{name}.weight"] = deltas.get(f"{name}.weight", 0) + delta
    out = {}
    with torch.no_grad():
        for key, value in sd.items():
            if ".lora_" in key:
                continue
            if not key.startswith(WRAPPED_PREFIX):
                raise KeyError(f"{key}: not a key of a LoraModel's state dict (expected the {WRAPPED_PREFIX!r} prefix)")
            plain = key[len(WRAPPED_PREFIX):].replace(".base_layer.", ".")
            if plain in deltas:
                value = (value.float() + deltas.pop(plain)).to(value.dtype)
            out[plain] = value.detach()
    if deltas:
        raise KeyError(f"state lacks the base weights of LoRA targets: {sorted(deltas)[:5]}")
    return out


def _as_state_dict(src: StateDictSource, device: str | torch.device) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(src, Mapping):
        return dict(src), "<state dict>"
    return read_safetensors(src, device), os.fspath(src)


def load_split(base_file: StateDictSource, adapter_file: StateDictSource, lora_file: StateDictSource,
               model_kwargs: Mapping, r: int, alpha: float | None = None, *, dropout: float = LORA_DROPOUT,
               device: str | torch.device = "cpu", merge: bool = True) -> nn.Module:
    """Assemble a LoRA fine-tune from its three published files, strictly (docs/reference.md §6).

    1. build MetisStage1(**model_kwargs) (it must have a cond_adapter);
    2. base file: exactly the model's keys minus `cond_adapter.*`;
    3. adapter file: exactly `model.cond_adapter.*` of this adapter (5 keys; 4 for l2s's MLP);
    4. wrap with LoRA (r, α) and load the LoRA file: exactly the 224 (16 layers × 7 × A/B) keys,
       shapes fixed by r;
    5. `merge_and_unload` (W' = W + (α/r)·B·A) unless `merge` is false.

    Args:
        base_file, adapter_file, lora_file: paths to the safetensors files, or loaded state dicts.
        model_kwargs: MetisStage1 constructor arguments (ft_type etc.).
        r, alpha: LoRA rank and α (None → 2r).
        dropout: LoRA dropout of the unmerged model.
        device: where to build the model and read the tensors.
        merge: return the merged plain MetisStage1 (all parameters trainable); else the LoraModel
            (call `.eval()` before inference: its LoRA dropout is active in training mode).
    Raises:
        CheckpointMismatchError: naming the file and every missing / unexpected / mis-shaped key.
    """
    from metis.models.metis_stage1 import MetisStage1

    with torch.device(device):
        model = MetisStage1(**model_kwargs)
    if getattr(model, ADAPTER_MODULE, None) is None:
        raise ValueError(f"MetisStage1({dict(model_kwargs)}) has no {ADAPTER_MODULE}; LoRA fine-tunes need an ft_type with an adapter")

    base, base_name = _as_state_dict(base_file, device)
    own = {k: v.shape for k, v in model.state_dict().items()}
    adapter_prefix = f"{ADAPTER_MODULE}."
    check_state_dict({k: s for k, s in own.items() if not k.startswith(adapter_prefix)}, base, source=base_name,
                     note="base file must hold the plain model's keys without cond_adapter.*")
    load_into(model, base, source=base_name, allow_missing=(adapter_prefix + "*",))

    adapter, adapter_name = _as_state_dict(adapter_file, device)
    file_prefix = WRAPPED_PREFIX + adapter_prefix
    check_state_dict({file_prefix + k: v.shape for k, v in model.cond_adapter.state_dict().items()}, adapter,
                     source=adapter_name, note="adapter file must hold exactly model.cond_adapter.*")
    load_into(model.cond_adapter, {k[len(file_prefix):]: v for k, v in adapter.items()}, source=adapter_name)

    wrapped = wrap_lora(model, r=r, alpha=alpha, dropout=dropout)
    lora, lora_name = _as_state_dict(lora_file, device)
    check_state_dict({k: v.shape for k, v in lora_state_dict(wrapped).items()}, lora, source=lora_name,
                     note=f"LoRA file must hold exactly the lora_A/lora_B tensors of rank {r}")
    result = wrapped.load_state_dict(lora, strict=False)
    if result.unexpected_keys:
        raise CheckpointMismatchError(lora_name, unexpected=result.unexpected_keys, note="rejected by load_state_dict")
    if not merge:
        return wrapped
    merged = wrapped.merge_and_unload()
    merged.requires_grad_(True)  # a plain model again: undo peft's freezing
    return merged
