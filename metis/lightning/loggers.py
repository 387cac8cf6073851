"""Logger factories."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_logged_in() -> bool:
    """True when an API key is available (WANDB_API_KEY or ~/.netrc from `wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(project: str, save_dir: str, name: str | None = None, mode: str | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger that runs offline unless the user has logged in (or WANDB_MODE says otherwise).

    Offline runs are written under `save_dir/wandb/`; the message printed says how to upload them.
    """
    mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(project=project, save_dir=save_dir, name=name, offline=(mode == "offline"), **kwargs)
    if mode == "offline":
        rank_zero_info(f"wandb is offline (not logged in); sync later with: wandb sync {Path(save_dir) / 'wandb'}/offline-run-*")
    return logger
