"""Where a fine-tune starts: find the base checkpoint named by `init`, load it strictly into the task's
model (the modules the fine-tune adds may be absent from it), and load a published adapter file.

    resolve_init("outputs/demo/export")   -> (model.safetensors, its config.json)
    load_init(net, "amphion/metis")       -> {"init", "file", "new": [keys left at their fresh init]}
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from metis.checkpoints.io import CheckpointNotFoundError, load_into, read_safetensors
from metis.checkpoints.lora import ADAPTER_MODULE, TTS_TRAINABLE
from metis.checkpoints.sources import resolve_source

BASE_FILE = "metis_base/model.safetensors"  # inside a folder laid out like amphion/metis
ARCH_KEYS = ("hidden_size", "num_layers", "num_heads", "cond_codebook_size", "phone_vocab_size")


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
    try:
        found = resolve_source(init, BASE_FILE)
    except CheckpointNotFoundError as e:
        if "outputs/demo/export" in os.fspath(init).replace(os.sep, "/"):
            raise CheckpointNotFoundError(f"init={init}: {e}; the demo fine-tunes start from the demo pre-training: "
                                          "run `python train.py` first (it writes outputs/demo/export/)") from e
        raise CheckpointNotFoundError(f"init={init}: {e}") from e
    return found.path, found.config


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
