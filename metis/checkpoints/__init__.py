"""Checkpoint files: strict, atomic load/save of every published file type, and the LoRA glue.

- `io`: `save_safetensors` (atomic), `read_safetensors` (refuses non-safetensors files by name),
  `load_into` (strict, names every mismatch).
- `sources`: `resolve_source` (a file, an export folder, a folder laid out like a published repo, or
  a Hugging Face repo id) and `build_export` (the model an export's config.json names).
- `lora`: peft LoraModel on the published target projections; LoRA / adapter / merged state dicts;
  `load_split` (base + adapter + LoRA files -> merged model).
- `published`: the table of published file kinds (`KINDS`) with `build`, `load`, `save`,
  `load_lora_split`.
"""

from metis.checkpoints.io import (CheckpointFormatError, CheckpointMismatchError, CheckpointNotFoundError,
                                  check_state_dict, load_into, read_safetensors, save_safetensors)
from metis.checkpoints.lora import (LORA_TARGETS, TTS_TRAINABLE, adapter_state_dict, load_split, lora_state_dict,
                                    merged_state_dict, wrap_lora)
from metis.checkpoints.published import KINDS, LORA_SPLITS, build, load, load_lora_split, save
from metis.checkpoints.sources import build_export, is_repo_id, resolve_source

__all__ = [
    "CheckpointFormatError", "CheckpointMismatchError", "CheckpointNotFoundError", "check_state_dict", "load_into",
    "read_safetensors", "save_safetensors",
    "LORA_TARGETS", "TTS_TRAINABLE", "adapter_state_dict", "load_split", "lora_state_dict", "merged_state_dict", "wrap_lora",
    "KINDS", "LORA_SPLITS", "build", "load", "load_lora_split", "save", "build_export", "is_repo_id", "resolve_source",
]
