"""Where weights come from: the one answer to "is this a local path or a Hub id, and which file?".

A *source* names weights in one of four ways:

    a file                  model.safetensors, metis_se.safetensors, ...: the file itself (a config.json
                            beside a .safetensors file makes it an export, below)
    an export folder        what this project writes (`ExportSafetensors`, `convert`): model.safetensors
                            and config.json, the net's constructor arguments (with its class as `_target_`)
    a published-layout      a local copy of amphion/metis or amphion/MaskGCT: the file at <folder>/<filename>
    folder
    a Hub repo id           "org/name": <filename> from the Hub, or from the local Hugging Face cache when
                            offline ($HF_HUB_OFFLINE); with no filename, an export repo (model.safetensors
                            + config.json at its root)

`resolve_source` returns the weights file and, for an export, its config; `build_export` builds the
model a config names (Hydra `instantiate`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metis.checkpoints.io import CheckpointNotFoundError

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"

# "org/name": a Hugging Face model repo id (letters, digits, '-', '_', '.').
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Suffixes that make a name a file, never a repo ("facebook/w2v-bert-2.0" has a dot but is a repo).
_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Resolved:
    """A source, found: the weights file and, for an export, its config (constructor arguments)."""

    path: Path
    config: dict | None = None
    config_path: Path | None = None

    @property
    def is_export(self) -> bool:
        return self.config_path is not None


def is_repo_id(source: str | os.PathLike) -> bool:
    """True when `source` names a Hub repo: spelled org/name, not an existing path, not spelled like
    a path (./, /, ~) or a file (.safetensors, .ckpt, ...)."""
    text = os.fspath(source)
    if text.startswith((".", "/", "~")) or text.lower().endswith(_FILE_SUFFIXES):
        return False
    return bool(_REPO_ID.match(text)) and not Path(text).exists()


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of constructor arguments")
    return config


def _local(weights: Path) -> Resolved:
    """A local weights file, with the export config beside it when there is one."""
    config = weights.parent / EXPORT_CONFIG
    if weights.suffix == ".safetensors" and config.is_file():
        return Resolved(weights, _read_config(config), config)
    return Resolved(weights)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _hub(repo: str, filename: str | None, revision: str | None, cache_dir, local_files_only: bool | None) -> Resolved:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    if cache_dir is None:
        cache_dir = os.environ.get("HF_HUB_CACHE") or None
    if local_files_only is None:
        local_files_only = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)
    name = filename or EXPORT_WEIGHTS

    def download(file: str) -> Path:
        return Path(hf_hub_download(repo, file, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only))

    how_to = (f"Either download it (`hf download {repo} {name}`, online), or put the file at "
              f"<folder>/{name} and pass <folder> (or the file itself) as the source.")
    try:
        weights = download(name)
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError) as e:
        where = "offline and not in the Hugging Face cache" if local_files_only else "not available from the Hub or the cache"
        raise CheckpointNotFoundError(
            f"{name} of Hugging Face repo {repo} is {where} (cache: {cache_dir or constants.HF_HUB_CACHE}). {how_to}") from e
    except HfHubHTTPError as e:
        raise CheckpointNotFoundError(f"could not fetch {name} from Hugging Face repo {repo}: {e}. {how_to}") from e
    if filename is not None:
        return Resolved(weights)
    try:
        config = download(EXPORT_CONFIG)
    except (LocalEntryNotFoundError, EntryNotFoundError):
        return Resolved(weights)
    return Resolved(weights, _read_config(config), config)


def resolve_source(source: str | os.PathLike, filename: str | None = None, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None) -> Resolved:
    """Find the weights `source` names (see the module docstring for the four kinds of source).

    Args:
        source: a file, an export folder, a folder laid out like the published repo, or a repo id.
        filename: the file's path inside the published repo ("metis_base/model.safetensors"); an
            export folder stands in for any `.safetensors` filename. None when only an export will do.
        revision: Hub revision (branch, tag or commit); default "main".
        cache_dir: Hugging Face cache folder; default $HF_HUB_CACHE (read at call time), else the
            huggingface_hub default.
        local_files_only: never touch the network; default true when $HF_HUB_OFFLINE is set.
    Returns:
        The local weights file, with the export's config when the source is an export.
    Raises:
        CheckpointNotFoundError naming what was looked for and where.
    """
    src = Path(source).expanduser()
    if src.is_file():
        return _local(src)
    if src.is_dir():
        if filename is not None and (src / filename).is_file():  # a published layout
            return Resolved(src / filename)
        weights = filename is None or filename.endswith(".safetensors")  # an export stands in for weights only
        if weights and (src / EXPORT_WEIGHTS).is_file():
            return _local(src / EXPORT_WEIGHTS)
        if weights and (src / EXPORT_CONFIG).is_file():
            raise CheckpointNotFoundError(f"export folder {src} has {EXPORT_CONFIG} but no {EXPORT_WEIGHTS}: "
                                          f"expected the weights at {src / EXPORT_WEIGHTS}")
        if filename is None:
            raise CheckpointNotFoundError(f"{src} is not an export: expected {EXPORT_WEIGHTS} and {EXPORT_CONFIG} in it")
        if not weights:
            raise CheckpointNotFoundError(f"{filename} not found in folder {src}: expected the file at {src / filename}")
        raise CheckpointNotFoundError(f"{filename} not found in folder {src}: it holds neither {src / filename} (a folder "
                                      f"laid out like the published repo) nor {EXPORT_WEIGHTS} (+ {EXPORT_CONFIG}, an "
                                      f"export of this project)")
    if not is_repo_id(source):
        raise CheckpointNotFoundError(
            f"checkpoint source {os.fspath(source)!r} is neither an existing file, an existing folder, nor a Hugging Face "
            f"repo id (org/name)")
    return _hub(os.fspath(source), filename, revision, cache_dir, local_files_only)


def build_export(config: Mapping[str, Any], default_target: str, *, source: str | os.PathLike = "config") -> Any:
    """The object an export's config describes: its `_target_` class (else `default_target`) built with
    the other keys, through Hydra `instantiate`. Errors name `source`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = {"_target_": default_target, **config}
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as e:
        raise ValueError(f"{source}: cannot build {node['_target_']} from its keys: {e}") from e
