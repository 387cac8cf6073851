"""Logger factories."""

from __future__ import annotations

import logging
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


class _DropTips(logging.Filter):
    """Lightning advertises its cloud products ("💡 Tip: ... try installing litlogger / litmodels") on
    every run; they say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_DROP_TIPS = _DropTips()


def tidy_console_logging() -> None:
    """One console line per log message, without Lightning's advertisements.

    `import lightning` gives the `lightning` logger its own console handler while leaving it to
    propagate, so under Hydra (whose handlers sit on the root logger) every Lightning message printed
    twice. With root handlers present, Lightning's own stream handlers go and messages reach the console
    and the run's Hydra log file once, through the root."""
    root_handlers = logging.getLogger().handlers
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if root_handlers:
            for h in list(logger.handlers):
                if type(h) is logging.StreamHandler:
                    logger.removeHandler(h)
            logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _DROP_TIPS not in logger.filters:
            logger.addFilter(_DROP_TIPS)
