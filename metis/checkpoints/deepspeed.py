"""Training checkpoints -> the net's full fp32 state dict, ready for the published safetensors layout.

Three sources, one result (`{key: tensor}` with the net's own key names, `net.` stripped):

    a Lightning `.ckpt` file                        its `state_dict`
    a DeepSpeed checkpoint folder (ZeRO-1/2/3;      the fp32 master weights consolidated from every
      what Lightning's DeepSpeedStrategy writes       rank's shard by Lightning's
      as `last.ckpt/`, `step….ckpt/`)                 `convert_zero_checkpoint_to_fp32_state_dict`
    a live DeepSpeed run (`gathered_state_dict`)    every parameter's full fp32 master gathered over
                                                    the ranks (a collective: call it on all of them)

Frozen parameters excluded from a DeepSpeed checkpoint (LoRA runs, `exclude_frozen_parameters`) are
simply absent: such a checkpoint converts to its trainable tensors only.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

NET_PREFIX = "net."  # the masked-generative modules keep the model as `self.net`
NET_CONFIG_KEY = "net_config"  # a training checkpoint's entry holding the net's constructor config (`_target_` + args)
_WRAPPER_PREFIX = "_forward_module."  # Lightning < 2.1 DeepSpeed checkpoints


def is_deepspeed_checkpoint(path: str | os.PathLike) -> bool:
    """A folder as DeepSpeed writes it: `latest` (tag file) and/or a tag folder with `*model_states.pt`."""
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or any(path.glob("*/*model_states.pt")))


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = NET_PREFIX, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Keys under `prefix` with the prefix removed; an error naming the file when none has it."""
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        some = ", ".join(list(state_dict)[:5])
        raise KeyError(f"{source}: no key starts with {prefix!r} (first keys: {some}); pass --prefix '' "
                       f"for a checkpoint of a bare model")
    return out


def lightning_checkpoint_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, the rest) of a Lightning `.ckpt` file, loaded with weights_only=True."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exn:
        raise ValueError(f"{path} is not a loadable Lightning checkpoint ({type(exn).__name__}: {exn})") from exn
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise KeyError(f"{path} has no 'state_dict' (keys: {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__})")
    sd = {k[len(_WRAPPER_PREFIX):] if k.startswith(_WRAPPER_PREFIX) else k: v for k, v in ckpt.pop("state_dict").items()}
    return sd, ckpt


@contextmanager
def weights_only_loads():
    """Inside, every `torch.load` runs torch's weights-only unpickler, also the ones DeepSpeed and
    Lightning make with `weights_only=False` while consolidating ZeRO shards: a checkpoint folder
    can then build only tensors, containers and the few DeepSpeed classes listed here, never run
    code. (`TORCH_FORCE_WEIGHTS_ONLY_LOAD` is read by torch at each load.) OmegaConf containers are
    allowed too: a module's hyper-parameters may hold them (plain data, rebuilt from their state)."""
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig, base, nodes

    allowed = [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, nodes.AnyNode, nodes.StringNode,
               nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, typing.Any, dict, list, int,
               collections.defaultdict]
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    except ImportError:  # pragma: no cover - deepspeed is needed to consolidate anyway
        pass
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def consolidate_zero_checkpoint(folder: str | os.PathLike, tag: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(fp32 state_dict of the LightningModule, the Lightning client state: global_step, epoch, ...)
    of a DeepSpeed checkpoint folder, consolidating the ZeRO shards of every rank on the CPU."""
    try:
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
    except ImportError as exn:  # pragma: no cover - deepspeed is a dependency of the recipe
        raise ImportError(f"converting the DeepSpeed checkpoint {folder} needs deepspeed (pip install deepspeed)") from exn
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix=".consolidate-") as tmp, weights_only_loads():
        out = Path(tmp) / "consolidated.ckpt"
        convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(out), tag=tag)
        ckpt = torch.load(out, map_location="cpu", weights_only=True)
    sd = ckpt.pop("state_dict")
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, ckpt


def training_checkpoint_state(path: str | os.PathLike, prefix: str = NET_PREFIX) -> tuple[dict[str, torch.Tensor], dict]:
    """(the net's state dict, checkpoint info) of a Lightning `.ckpt` file or a DeepSpeed folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if not is_deepspeed_checkpoint(path):
            raise ValueError(f"{path} is a folder but not a DeepSpeed checkpoint (no 'latest' file, no */*model_states.pt)")
        sd, info = consolidate_zero_checkpoint(path)
    else:
        sd, info = lightning_checkpoint_state(path)
    return (strip_prefix(sd, prefix, source=str(path)) if prefix else sd), info


def gathered_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of `net` trained under DeepSpeed, fp32 master weights where the optimizer
    holds them (trainable parameters), the gathered module values otherwise (frozen parameters),
    buffers as they are. Works for ZeRO-1/2/3 (ZeRO-3 parameters are partitioned; this gathers
    them one at a time). A collective: every rank must call it; every rank gets the dict.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    params = {id(p): p for p in net.parameters()}
    out: dict[str, torch.Tensor] = {}
    for name, value in net.state_dict(keep_vars=True).items():
        p = params.get(id(value))
        if p is None:  # a buffer: never partitioned
            out[name] = value.detach().to("cpu").clone()
            continue
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                full = p.detach().clone()
        full = full.to("cpu")
        out[name] = full.float() if full.is_floating_point() else full
    return out
