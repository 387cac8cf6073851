"""Every published checkpoint file type, as one table: how to build its model, which part of the
model's state dict the file holds, and where it lives in the released repos.

    model = published.load("metis_base", "amphion/metis")        # Hub / HF cache
    model = published.load("maskgct_s2a_full", "/data/MaskGCT")   # a local copy of amphion/MaskGCT
    merged = published.load_lora_split("se", "amphion/metis")     # base + adapter + LoRA, merged
    published.save(model, "metis_base", "out/metis_base/model.safetensors")

A kind's keys are the published ones exactly (layouts/*.json), so a file written by `save` loads
strictly both here and in the reference code. Kinds whose `filename` says "(not released)" follow
the released naming but no such file is published.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch
from hydra.utils import get_class
from torch import nn

from metis.checkpoints.io import CheckpointMismatchError, check_state_dict, load_into, read_safetensors, save_safetensors
from metis.checkpoints.lora import (ADAPTER_MODULE, ADAPTER_NAME, WRAPPED_PREFIX, adapter_state_dict, load_split, lora_state_dict,
                                    wrap_lora)
from metis.checkpoints.sources import resolve_source
from metis.tasks import TASKS
from metis.tasks import names as task_names

METIS_REPO = "amphion/metis"
MASKGCT_REPO = "amphion/MaskGCT"

# Model classes as Hydra `_target_` paths (what an export's config.json names too).
STAGE1 = "metis.models.metis_stage1.MetisStage1"
S2A = "metis.models.s2a.MaskGCTS2A"
REPCODEC = "metis.models.semantic_codec.RepCodec"
CODEC_ENCODER = "metis.models.acoustic_codec.CodecEncoder"
CODEC_DECODER = "metis.models.acoustic_codec.CodecDecoder"

Part = Literal["model", "lora", "adapter"]


@dataclass(frozen=True)
class FileKind:
    """One published file type.

    Attributes:
        model: the model class as a `_target_` path (`hydra.utils.get_class`), built with `kwargs` (the released config; the class
            defaults are the base config, so only the differences are listed).
        kwargs: constructor arguments.
        part: which keys the file holds: the whole state dict ("model"), the LoRA tensors ("lora")
            or the adapter ("adapter").
        repo: Hugging Face repo of the released file; None when no such file is released.
        filename: path inside the repo (and inside a local folder laid out like it).
        lora: (r, α) when the model is wrapped in peft.LoraModel (keys then start with `model.`).
        prefix: prefix of the file's keys relative to the plain model's.
        layouts: the layouts/*.json files (stems) describing this file's keys.
        note: where it comes from.
    """

    model: str
    kwargs: Mapping = field(default_factory=dict)
    part: Part = "model"
    repo: str | None = None
    filename: str | None = None
    lora: tuple[int, int] | None = None
    prefix: str = ""
    layouts: tuple[str, ...] = ()
    note: str = ""


def _metis_lora_task(task: str, r: int) -> dict[str, FileKind]:
    """The LoRA fine-tune files of task se / tse / vc (alpha = 2r) and the full checkpoint that a
    LoRA-wrapped model would need (`ckpt_path` branch with use_lora)."""
    kw = {"ft_type": task}
    folder = f"metis_{task}/metis_{task}_lora_{r}"
    return {
        f"metis_{task}_lora": FileKind(STAGE1, kw, "lora", METIS_REPO, f"{folder}.safetensors", (r, 2 * r), WRAPPED_PREFIX,
                                       (f"lora_file_{task}_r{r}",), f"LoRA tensors of {task}.json (r={r}, alpha={2 * r})"),
        f"metis_{task}_adapter": FileKind(STAGE1, kw, "adapter", METIS_REPO, f"{folder}_adapter.safetensors", None,
                                          WRAPPED_PREFIX, (f"adapter_file_{task}",), "zero-gate SimpleAdapter of the LoRA fine-tune"),
        f"metis_{task}_lorawrapped": FileKind(STAGE1, kw, "model", None, f"metis_{task}/metis_{task}_lorawrapped.safetensors",
                                              (r, 2 * r), WRAPPED_PREFIX, (f"ckpt_lorawrapped_{task}__{task}",),
                                              "(not released) whole LoraModel state dict: base_layer + lora_A/B + adapter"),
    }


KINDS: Mapping[str, FileKind] = MappingProxyType({
    # --- Metis stage 1 (amphion/metis), all MetisStage1 with H=1536, 16 layers, 16 heads, V=8192
    "metis_base": FileKind(STAGE1, {}, "model", METIS_REPO, "metis_base/model.safetensors",
                           layouts=("metis_stage1_base__metis_base_model_safetensors",),
                           note="pre-trained Metis (base.json): no phones, no adapter"),
    # the registry's tasks with a published LoRA split (se r=32, tse r=32, vc r=16)
    **{k: v for spec in TASKS.values() if spec.lora_r is not None for k, v in _metis_lora_task(spec.name, spec.lora_r).items()},
    # Full fine-tunes (ft.json: SimpleAdapter, no LoRA). The merged result of a LoRA fine-tune
    # (load_split) has the same keys: it is what the reference's LoRA branch builds.
    "metis_se_full": FileKind(STAGE1, {"ft_type": "se"}, "model", None, "metis_se/metis_se.safetensors",
                              layouts=("ckpt_full_se__ft", "metis_stage1_plain_se__base_path"),
                              note="(not released) full fine-tune / merged LoRA fine-tune"),
    "metis_tse_full": FileKind(STAGE1, {"ft_type": "tse"}, "model", None, "metis_tse/metis_tse.safetensors",
                               layouts=("ckpt_full_tse__ft", "metis_stage1_plain_tse__base_path"),
                               note="(not released) full fine-tune / merged LoRA fine-tune"),
    "metis_vc_full": FileKind(STAGE1, {"ft_type": "vc"}, "model", METIS_REPO, "metis_vc/metis_vc.safetensors",
                              layouts=("ckpt_full_vc__ft", "metis_stage1_plain_vc__base_path"),
                              note="released full VC fine-tune (ft.json)"),
    "metis_omni_adapter_only": FileKind(STAGE1, {"ft_type": "omni"}, "model", None, None,
                                        layouts=("metis_stage1_plain_omni__base_path",),
                                        note="what the reference's LoRA branch would build for omni: adapter, no phones"),
    "metis_l2s_simple_adapter": FileKind(STAGE1, {"ft_type": "l2s", "cond_dim": 768, "use_zero_gate_adapter": True},
                                         "model", None, None, layouts=("metis_stage1_plain_l2s__base_path_SimpleAdapter",),
                                         note="docs/reference.md Q11: the reference's LoRA branch ignores use_zero_gate_adapter for l2s; "
                                              "the released l2s checkpoint is NOT this layout"),
    "metis_l2s": FileKind(STAGE1, {"ft_type": "l2s", "cond_dim": 768}, "model", METIS_REPO, "metis_l2s/metis_l2s.safetensors",
                          layouts=("ckpt_full_l2s__l2s",),
                          note="l2s.json: plain MLP adapter 768 -> 6144 -> 1536 (file name by the released pattern)"),
    "metis_omni": FileKind(STAGE1, {"ft_type": "omni", "use_phone_cond": True}, "model", METIS_REPO,
                           "metis_omni/metis_omni.safetensors", layouts=("ckpt_full_omni__omni",),
                           note="omni.json (= tts.json of commit 854e305): phone prefix and SimpleAdapter"),
    "metis_tts": FileKind(STAGE1, {"ft_type": "tts", "use_phone_cond": True}, "model", MASKGCT_REPO,
                          "t2s_model/model.safetensors", layouts=("ckpt_full_tts__tts", "maskgct_t2s__tts_json"),
                          note="Metis-TTS is the MaskGCT T2S checkpoint (docs/reference.md Q17: not t2s/model.safetensors)"),
    # --- MaskGCT (amphion/MaskGCT)
    "maskgct_s2a_1layer": FileKind(S2A, {"num_quantizer": 1, "predict_layer_1": True}, "model", MASKGCT_REPO,
                                   "s2a_model/s2a_model_1layer/model.safetensors", layouts=("maskgct_s2a_1layer",),
                                   note="S2A for acoustic layer 0 (docs/reference.md Q14: zero-size embed_tokens key)"),
    "maskgct_s2a_full": FileKind(S2A, {"num_quantizer": 12, "predict_layer_1": False}, "model", MASKGCT_REPO,
                                 "s2a_model/s2a_model_full/model.safetensors", layouts=("maskgct_s2a_full",),
                                 note="S2A for acoustic layers 1-11"),
    "semantic_codec": FileKind(REPCODEC, {}, "model", MASKGCT_REPO, "semantic_codec/model.safetensors",
                               layouts=("semantic_codec_repcodec",), note="RepCodec, 8192 codes"),
    "acoustic_encoder": FileKind(CODEC_ENCODER, {}, "model", MASKGCT_REPO, "acoustic_codec/model.safetensors",
                                 layouts=("acoustic_codec_encoder",), note="DAC-style encoder (weight-norm g/v keys)"),
    "acoustic_decoder": FileKind(CODEC_DECODER, {}, "model", MASKGCT_REPO, "acoustic_codec/model_1.safetensors",
                                 layouts=("acoustic_codec_decoder",), note="RVQ + Vocos decoder (docs/reference.md Q15: holds the ISTFT window)"),
})

# LoRA fine-tunes assembled from three files: task -> (base kind, adapter kind, LoRA kind).
LORA_SPLITS: Mapping[str, tuple[str, str, str]] = MappingProxyType(
    {task: ("metis_base", f"metis_{task}_adapter", f"metis_{task}_lora") for task in task_names(lora=True)})

# layouts/*.json stem -> kind
LAYOUTS: Mapping[str, str] = MappingProxyType({stem: kind for kind, fk in KINDS.items() for stem in fk.layouts})


def kind_spec(kind: str) -> FileKind:
    try:
        return KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown checkpoint kind {kind!r}; known: {', '.join(KINDS)}") from None


def build(kind: str, device: str | torch.device = "cpu", *, lora: tuple[int, int] | None = None,
          trainable_modules=None, **overrides) -> nn.Module:
    """Build the model of `kind` with the released config (meta device: shapes only, instantly).

    Args:
        kind: a key of KINDS.
        device: where to create the parameters.
        lora: (r, α) replacing the kind's LoRA rank (only for LoRA kinds).
        trainable_modules: passed to `wrap_lora` for LoRA kinds (None: the adapter stays trainable).
        overrides: constructor arguments replacing the released ones (tiny test models).
    """
    spec = kind_spec(kind)
    if lora is not None and spec.lora is None:
        raise ValueError(f"kind {kind!r} has no LoRA to set a rank for")
    with torch.device(device):
        model = get_class(spec.model)(**{**spec.kwargs, **overrides})
    if spec.lora is not None:
        r, alpha = lora or spec.lora
        model = wrap_lora(model, r=r, alpha=alpha, trainable_modules=trainable_modules)
    return model


# part -> the file's tensors, taken from a built model
_EXTRACT: Mapping[str, Callable[[nn.Module], dict[str, torch.Tensor]]] = MappingProxyType({
    "model": lambda m: dict(m.state_dict()),
    "lora": lora_state_dict,
    "adapter": adapter_state_dict,
})


def file_state_dict(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """The tensors of `model` that a file of `kind` holds, under the published key names."""
    return _EXTRACT[kind_spec(kind).part](model)


def _load_model(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    load_into(model, sd, source=source)


def _load_lora(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    expected = {k: v.shape for k, v in lora_state_dict(model).items()}
    check_state_dict(expected, sd, source=source, note="a LoRA file holds exactly the lora_A/lora_B tensors")
    result = model.load_state_dict(dict(sd), strict=False)
    if result.unexpected_keys:
        raise CheckpointMismatchError(source, unexpected=result.unexpected_keys, note="rejected by load_state_dict")


def _load_adapter(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    prefix = f"{WRAPPED_PREFIX}{ADAPTER_MODULE}."
    expected = {k: v.shape for k, v in adapter_state_dict(model).items()}
    check_state_dict(expected, sd, source=source, note="an adapter file holds exactly model.cond_adapter.*")
    load_into(getattr(model, ADAPTER_MODULE), {k[len(prefix):]: v for k, v in sd.items()}, source=source)


# part -> how a file's tensors go into a built model (strictly, for exactly the file's keys)
_LOAD: Mapping[str, Callable[[nn.Module, Mapping[str, torch.Tensor], str], None]] = MappingProxyType({
    "model": _load_model,
    "lora": _load_lora,
    "adapter": _load_adapter,
})


def _source_or_repo(kind: str, source) -> tuple[str | os.PathLike, str]:
    spec = kind_spec(kind)
    if spec.filename is None:
        raise ValueError(f"kind {kind!r} is a model layout, not a file ({spec.note}); load it with another kind")
    if source is None:
        if spec.repo is None:
            raise ValueError(f"{kind!r} ({spec.filename}) is not released: pass the file or a folder holding {spec.filename}")
        source = spec.repo
    return source, spec.filename


def load(kind: str, source: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
         lora: tuple[int, int] | None = None, **overrides) -> nn.Module:
    """Build the model of `kind`, find its file, and load it strictly.

    Args:
        kind: a key of KINDS.
        source: a file, a folder laid out like the published repo, or a repo id; None means the
            kind's released repo (Hub or HF cache).
        device: where to build the model and read the tensors.
        lora, overrides: as for `build` (for files of other sizes).
    Returns:
        The model. For "lora" and "adapter" kinds only the file's tensors are loaded (the rest keeps
        its initialisation): use `load_lora_split` for a complete fine-tuned model.
    Raises:
        CheckpointMismatchError / CheckpointNotFoundError naming the file and the keys.
    """
    src, filename = _source_or_repo(kind, source)
    path = resolve_source(src, filename).path
    model = build(kind, device, lora=lora, **overrides)
    _LOAD[kind_spec(kind).part](model, read_safetensors(path, device), os.fspath(path))
    return model


def load_lora_split(task: str, source: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                    merge: bool = True, lora: tuple[int, int] | None = None, **overrides) -> nn.Module:
    """A released LoRA fine-tune (se, tse, vc): base + adapter + LoRA files -> `load_split`.

    Args:
        task: a key of LORA_SPLITS.
        source: a folder laid out like amphion/metis, or a repo id (default amphion/metis).
        merge: return the merged plain MetisStage1 (default) or the LoraModel.
        lora, overrides: as for `build`.
    """
    if task not in LORA_SPLITS:
        raise KeyError(f"no LoRA fine-tune {task!r}; known: {', '.join(LORA_SPLITS)}")
    paths = [resolve_source(*_source_or_repo(kind, source)).path for kind in LORA_SPLITS[task]]
    lora_spec = KINDS[LORA_SPLITS[task][2]]
    r, alpha = lora or lora_spec.lora
    return load_split(*paths, {**lora_spec.kwargs, **overrides}, r=r, alpha=alpha, device=device, merge=merge)


_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")


def key_pattern(keys) -> set[str]:
    """Keys with their numeric indices replaced by '#': independent of the number of layers."""
    return {_INDEX.sub("#", k) for k in keys}


def save(model: nn.Module, kind: str, path: str | os.PathLike, metadata: Mapping[str, str] | None = None):
    """Write the part of `model` that a `kind` file holds, under the published keys, atomically.

    The key names (indices aside, so smaller test models pass) must be exactly those of the
    released config's model: saving an se model as "metis_base", or a plain model as a LoRA file,
    is an error naming the offending keys.

    Returns:
        The written path.
    """
    meta = {}
    if kind_spec(kind).lora is not None:
        cfg = model.peft_config[ADAPTER_NAME]
        meta["metis.lora"] = json.dumps({"r": cfg.r, "lora_alpha": cfg.lora_alpha})
    return save_state(file_state_dict(model, kind), kind, path, {**meta, **(metadata or {})},
                      what=type(model).__name__)


def save_state(sd: Mapping[str, torch.Tensor], kind: str, path: str | os.PathLike,
               metadata: Mapping[str, str] | None = None, what: str = "state dict"):
    """`save` for tensors already under the file's key names (e.g. gathered from DeepSpeed ranks):
    the same key-pattern check against the published layout, then an atomic write."""
    reference = key_pattern(file_state_dict(build(kind, "meta"), kind))
    got = key_pattern(sd)
    if got != reference:
        raise CheckpointMismatchError(f"{what} saved as {kind!r}", missing=reference - got,
                                      unexpected=got - reference, note="key patterns ('#' = any index) differ from the published layout")
    return save_safetensors(dict(sd), path, {"format": "pt", "metis.kind": kind, **(metadata or {})})
