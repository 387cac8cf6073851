"""Logger factories.

`ResumableCSVLogger` is Lightning's CSVLogger with a `metrics.csv` that keeps the run's history across
resumes. Lightning's deletes an existing metrics.csv when it starts (and rewrites the file whenever a
new column appears), so a resumed run loses everything logged before the resume. Here the first save
after a (re)start drops only the rows from the first step it logs on (steps a killed run logged after
its last checkpoint, which the resumed run logs again), and every save rewrites the whole file
atomically (metis.atomic: temporary file beside it, fsync, rename), so a kill mid-write never leaves
half a row; new columns are added, old ones kept.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info

from metis.atomic import write_bytes


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


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, minus deleting the previous metrics.csv."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._restarted = True  # the first save trims rows of steps the resumed run logs again

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        pass

    def _existing(self) -> tuple[list[str], list[dict]]:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return [], []
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def save(self) -> None:
        if not self.metrics:
            return
        keys, rows = self._existing()
        if self._restarted:
            first = min(float(m["step"]) for m in self.metrics)
            rows = [r for r in rows if not _step(r) >= first]
            self._restarted = False
        for m in self.metrics:
            keys += [k for k in m if k not in keys]
        self.metrics_keys = keys
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows + self.metrics)
        write_bytes(self.metrics_file_path, buf.getvalue().encode())
        self.metrics = []


def _step(row: dict) -> float:
    try:
        return float(row.get("step"))
    except (TypeError, ValueError):
        return float("-inf")


class ResumableCSVLogger(CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` whose metrics.csv is appended across resumes (see above)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
