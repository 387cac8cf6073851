"""Build an inference `Pipeline` from checkpoints: local folders laid out like the published repos
(amphion/metis, amphion/MaskGCT, facebook/w2v-bert-2.0), Hugging Face repo ids (online or cached), or
this project's exports (`model.safetensors` + `config.json` from `ExportSafetensors`).

Stage-1 checkpoint per task (default sources; `stage1={task: source}` replaces one):

    tts   amphion/MaskGCT  t2s_model/model.safetensors                       (Metis-TTS = MaskGCT T2S, docs/reference.md Q17)
    se    amphion/metis    metis_se/metis_se.safetensors, else the LoRA split:
                           metis_base/model.safetensors + metis_se/metis_se_lora_32{,_adapter}.safetensors
    tse   amphion/metis    the same pattern (LoRA r=32)
    vc    amphion/metis    metis_vc/metis_vc.safetensors, else the LoRA split (r=16)
    l2s   amphion/metis    metis_l2s/metis_l2s.safetensors
    omni  amphion/metis    metis_omni/metis_omni.safetensors (serves every task when omni=true)

A source is a repo id, a folder laid out like the repo, a single .safetensors file, or an export
folder (config.json + model.safetensors; config.json's `_target_` names the class). Every load is
strict; a missing file raises CheckpointNotFoundError naming the file and where it was expected.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metis import tasks as registry
from metis.checkpoints import published
from metis.checkpoints.io import CheckpointNotFoundError, load_into, read_safetensors
from metis.checkpoints.sources import EXPORT_CONFIG, EXPORT_WEIGHTS, Resolved, build_export, is_repo_id, resolve_source
from metis.inference.pipeline import Pipeline
from metis.inference.tasks import TASKS

# task -> (default repo role, kind of the whole-model file): the registry's published checkpoints
STAGE1_KINDS: Mapping[str, tuple[str, str]] = {name: spec.checkpoint for name, spec in registry.TASKS.items()
                                               if spec.checkpoint is not None}
DEFAULT_CLASSES = {"stage1": published.STAGE1, "s2a": published.S2A}


def _export(source: str | os.PathLike | None) -> Resolved | None:
    """The export `source` names (weights with config.json), or None: a published file, folder or repo."""
    if source is None or is_repo_id(source):
        return None
    p = Path(source).expanduser()
    if not (p.is_file() or (p / EXPORT_WEIGHTS).is_file() or (p / EXPORT_CONFIG).is_file()):
        return None  # a folder laid out like the published repo
    found = resolve_source(p)
    return found if found.is_export else None


def load_export(source: str | os.PathLike, role: str, device: str | torch.device = "cpu") -> nn.Module:
    """A model written by `ExportSafetensors`: build the class in config.json (`_target_`, default the
    role's class) with the config's arguments, then load the weights strictly."""
    found = _export(source)
    if found is None:
        raise CheckpointNotFoundError(f"{source} is not an export: expected {EXPORT_CONFIG} and {EXPORT_WEIGHTS} in one folder")
    with torch.device(device):
        model = build_export(found.config, DEFAULT_CLASSES[role], source=found.config_path)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{found.config_path}: _target_ {found.config.get('_target_')!r} is not an nn.Module class")
    load_into(model, read_safetensors(found.path, device), source=str(found.path))
    return model


def load_stage1(task: str, source: str | os.PathLike | None = None, *, metis: str = published.METIS_REPO,
                maskgct: str = published.MASKGCT_REPO, overrides: Mapping[str, Any] | None = None,
                device: str | torch.device = "cpu") -> nn.Module:
    """The stage-1 model of a registry task; see the module docstring for the published files.

    Args:
        source: a repo id, a published-layout folder, a file, or an export folder; None uses the
            task's default repo (`metis` or `maskgct`).
        overrides: constructor arguments replacing the released config (other model sizes).
    """
    registry.get(task)  # a KeyError naming the tasks
    if _export(source) is not None:
        return load_export(source, "stage1", device)
    if task not in STAGE1_KINDS:
        raise CheckpointNotFoundError(f"no published stage-1 checkpoint for task {task!r}: pass your fine-tune's export "
                                      f"folder (pipeline.stage1={{{task}: outputs/<run>/export}})")
    role, kind = STAGE1_KINDS[task]
    src = source if source is not None else {"metis": metis, "maskgct": maskgct}[role]
    overrides = dict(overrides or {})
    if task not in published.LORA_SPLITS:
        return published.load(kind, src, device=device, **overrides)
    try:
        return published.load(kind, src, device=device, **overrides)
    except CheckpointNotFoundError as full_missing:
        if Path(src).expanduser().is_file():
            raise
        try:
            return published.load_lora_split(task, src, device=device, **overrides)
        except CheckpointNotFoundError as split_missing:
            raise CheckpointNotFoundError(
                f"no {task} stage-1 checkpoint in {src}: neither a full fine-tune ({full_missing}) nor the "
                f"published LoRA split ({split_missing})") from split_missing


def load_s2a(which: str, source: str | os.PathLike = published.MASKGCT_REPO, *, overrides: Mapping[str, Any] | None = None,
             device: str | torch.device = "cpu") -> nn.Module:
    """`which` = "s2a_1layer" or "s2a_full" from amphion/MaskGCT (repo id or folder), a file, or an export."""
    if which not in ("s2a_1layer", "s2a_full"):
        raise KeyError(f"which must be 's2a_1layer' or 's2a_full', got {which!r}")
    if _export(source) is not None:
        return load_export(source, "s2a", device)
    return published.load(f"maskgct_{which}", source, device=device, **dict(overrides or {}))


W2V_BERT_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
# where each source is set: infer.py / `metis infer` key (load_pipeline's argument without `pipeline.`)
SOURCE_KEYS = {"metis": "pipeline.metis", "maskgct": "pipeline.maskgct", "w2v_bert": "pipeline.w2v_bert",
               "s2a_1layer": "pipeline.s2a_1layer", "s2a_full": "pipeline.s2a_full", "stage1": "pipeline.stage1"}


def _missing(source: str | os.PathLike, filename: str) -> str | None:
    """None if `filename` of `source` is found, else why not (`resolve_source`'s message)."""
    p = Path(source).expanduser()
    if not p.exists() and not is_repo_id(source):  # a local folder
        return f"expected the file at {p / filename} (there is no {p})"
    try:
        resolve_source(source, filename)
    except CheckpointNotFoundError as e:
        if p.exists():
            return str(e)
        return f"{filename} of Hugging Face repo {source}: not in the local Hugging Face cache, and not downloadable now"
    return None


def _stage1_missing(task: str, source: str | os.PathLike) -> str | None:
    """None if the stage-1 files of `task` are there (an export, the whole-model file, or for se/tse/vc
    the published LoRA split), else one line saying what is missing."""
    if _export(source) is not None:
        return None
    kind = STAGE1_KINDS[task][1]
    full = _missing(source, published.kind_spec(kind).filename)
    if full is None or task not in published.LORA_SPLITS or Path(source).expanduser().is_file():
        return full
    split = [m for k in published.LORA_SPLITS[task] if (m := _missing(source, published.kind_spec(k).filename))]
    return None if not split else f"neither the full fine-tune ({full}) nor the published LoRA split ({'; '.join(split)})"


def stage1_keys(tasks: Sequence[str], omni: bool) -> list[str]:
    """The stage-1 models a pipeline serving `tasks` loads: one per task, or with `omni` the omni model
    for the tasks it serves (registry: `omni.serves`) and one per other task."""
    if not omni:
        return list(tasks)
    return ["omni"] + [t for t in tasks if t not in registry.get("omni").serves]


def default_tasks(stage1: Mapping[str, Any] | None) -> list[str]:
    """Every inference task with a published checkpoint, plus those given a source in `stage1` (a task
    with nothing published, such as a new one, is served once you give its fine-tune's export)."""
    stage1 = stage1 or {}
    return [t for t in TASKS if t in STAGE1_KINDS or stage1.get(t)]


def missing_checkpoints(tasks: Sequence[str], *, metis: str, maskgct: str, w2v_bert: str, stage1: Mapping[str, Any],
                        omni: bool = False, s2a_1layer: str | None = None, s2a_full: str | None = None,
                        semantic: bool = True, acoustic: bool = True) -> list[str]:
    """Every checkpoint file a pipeline serving `tasks` needs but cannot find, one line each saying
    which file, where it was expected and which key sets its source. `semantic` / `acoustic` False:
    the caller brings its own tokenizer, so w2v-BERT + RepCodec / the codec files are not needed."""
    problems = [f"w2v-BERT 2.0 ({SOURCE_KEYS['w2v_bert']}): {m}" for f in W2V_BERT_FILES if semantic and (m := _missing(w2v_bert, f))]
    needed = ((["semantic_codec"] if semantic else []) + (["acoustic_encoder", "acoustic_decoder"] if acoustic else []))
    for role, kind, src in (*(("maskgct", kind, maskgct) for kind in needed),
                            ("s2a_1layer", "maskgct_s2a_1layer", s2a_1layer or maskgct),
                            ("s2a_full", "maskgct_s2a_full", s2a_full or maskgct)):
        if _export(src) is None and (m := _missing(src, published.kind_spec(kind).filename)):
            problems.append(f"{kind} ({SOURCE_KEYS[role]}): {m}")
    for key in stage1_keys(tasks, omni):
        if key not in STAGE1_KINDS and not stage1.get(key):
            problems.append(f"{key} stage 1 ({SOURCE_KEYS['stage1']}.{key}): nothing is published for {key}; give your "
                            f"fine-tune's export folder")
            continue
        role = STAGE1_KINDS[key][0] if key in STAGE1_KINDS else "metis"
        src = stage1.get(key) or {"metis": metis, "maskgct": maskgct}[role]
        if m := _stage1_missing(key, src):
            where = f"{SOURCE_KEYS['stage1']}.{key}" if stage1.get(key) else SOURCE_KEYS[role]
            problems.append(f"{key} stage 1 ({where}): {m}")
    return problems


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pipeline(*, tasks: Sequence[str] | None = None, metis: str = published.METIS_REPO, maskgct: str = published.MASKGCT_REPO,
                  w2v_bert: str = "facebook/w2v-bert-2.0", stats: str | None = None, w2v_layer: int = 17,
                  stage1: Mapping[str, str | None] | None = None, omni: bool = False,
                  s2a_1layer: str | None = None, s2a_full: str | None = None,
                  stage1_config: Mapping[str, Any] | None = None, stage1_task_config: Mapping[str, Mapping[str, Any]] | None = None,
                  s2a_1layer_config: Mapping[str, Any] | None = None, s2a_full_config: Mapping[str, Any] | None = None,
                  repcodec_config: Mapping[str, Any] | None = None, encoder_config: Mapping[str, Any] | None = None,
                  decoder_config: Mapping[str, Any] | None = None, device: str = "auto", tokenizer_batch_size: int = 8,
                  semantic: Any = None, acoustic: Any = None, **pipeline_kwargs) -> Pipeline:
    """Assemble a Pipeline; stage-1 and S2A models load lazily (on a task's first use).

    Args:
        tasks: tasks this pipeline serves (their stage-1 checkpoints are looked up on first use); None:
            `default_tasks(stage1)`.
        metis, maskgct, w2v_bert: sources of the three published repos (repo ids or local folders).
        stats: w2v-BERT normalisation stats; None = the released stats shipped with the package.
        stage1: task -> source replacing the default (an export folder of a fine-tune, a file, ...).
        omni: serve the tasks the omni model serves (registry `omni.serves`) with the omni checkpoint
            (`stage1.omni` or metis_omni).
        s2a_1layer, s2a_full: sources of the S2A models (default: `maskgct`).
        *_config: constructor overrides (non-released sizes; tests use tiny models).
        semantic: a built semantic tokenizer (`features()` + `encode()` at 16 kHz) replacing w2v-BERT +
            RepCodec, e.g. the demo's k-means tokenizer (pipeline=demo); its features are finetune_cond.
        acoustic: a built acoustic tokenizer replacing the released codec, e.g. a trained export
            (`AcousticTokenizer.from_export`).
        device: "auto" (cuda if available), "cpu", "cuda", ...
        pipeline_kwargs: passed to Pipeline (fast, batch_size, chunk_seconds, settings, ...).
    """
    from metis.tokenizers.acoustic import AcousticTokenizer
    from metis.tokenizers.semantic import DEFAULT_STATS, SemanticTokenizer

    dev = resolve_device(device)
    stage1 = dict(stage1 or {})
    tasks = default_tasks(stage1) if tasks is None else list(tasks)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; tasks are {TASKS}")
    task_cfg = {k: dict(v or {}) for k, v in (stage1_task_config or {}).items()}
    models: dict[str, Any] = {}
    for key in stage1_keys(tasks, omni):
        models[key] = functools.partial(load_stage1, key, stage1.get(key), metis=metis, maskgct=maskgct,
                                        overrides={**dict(stage1_config or {}), **task_cfg.get(key, {})}, device=dev)
    missing = missing_checkpoints(tasks, metis=metis, maskgct=maskgct, w2v_bert=str(w2v_bert),
                                  stage1=stage1, omni=omni, s2a_1layer=s2a_1layer, s2a_full=s2a_full,
                                  semantic=semantic is None, acoustic=acoustic is None)
    if missing:
        raise CheckpointNotFoundError(
            f"{len(missing)} checkpoint file(s) missing; put each where it says, or point the key in brackets at "
            "another folder (infer.py / metis infer; in Python the same names without `pipeline.`):\n  - "
            + "\n  - ".join(missing)
            + "\nA repo id loads from the Hub when online, else from the Hugging Face cache; offline, copy the repo into a "
              "folder (`hf download <repo> --local-dir <folder>` where the Hub is reachable) and pass that folder.")
    if semantic is None:  # the released w2v-BERT 2.0 + RepCodec (pipeline=demo passes its own)
        try:
            semantic = SemanticTokenizer(w2v_bert, stats if stats is not None else DEFAULT_STATS, maskgct, layer=w2v_layer,
                                         codec_config=dict(repcodec_config) if repcodec_config else None, device=dev,
                                         batch_size=tokenizer_batch_size)
        except OSError as e:
            if isinstance(e, CheckpointNotFoundError):
                raise
            raise CheckpointNotFoundError(f"cannot load w2v-BERT 2.0 from {w2v_bert!r} ({e}); download facebook/w2v-bert-2.0 "
                                          "into a folder and pass pipeline.w2v_bert=<folder>") from e
    if acoustic is None:
        acoustic = AcousticTokenizer(maskgct, maskgct, encoder_config=dict(encoder_config) if encoder_config else None,
                                     decoder_config=dict(decoder_config) if decoder_config else None, device=dev,
                                     batch_size=tokenizer_batch_size)
    s1 = functools.partial(load_s2a, "s2a_1layer", s2a_1layer or maskgct, overrides=s2a_1layer_config, device=dev)
    sf = functools.partial(load_s2a, "s2a_full", s2a_full or maskgct, overrides=s2a_full_config, device=dev)
    return Pipeline(models, s1, sf, semantic, acoustic, device=dev, **pipeline_kwargs)


__all__ = ["STAGE1_KINDS", "load_export", "load_pipeline", "load_s2a", "load_stage1", "missing_checkpoints", "resolve_device"]
