"""Trainable vs total parameter counts of a plain or LoRA-wrapped fine-tuning model, in one line."""

from __future__ import annotations

from peft import LoraModel
from torch import nn

from metis.checkpoints.lora import ADAPTER_MODULE


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
