"""What keeps a long run alive: non-finite losses skipped (all ranks together), a checkpoint on
SIGTERM, a data position that resumes, ranks that never wait on each other's shorter validation
stream, and picking a checkpoint that actually loads.

    NonFiniteGuard      decides, on every rank at once, whether a step's loss is NaN/inf; the module
                        then skips the update (see MaskedGenerativeModule.training_step).
    CheckpointOnSigterm saves <checkpoints>/last.ckpt when the run is stopped by SIGTERM.
    ResumableSampler    a seeded, per-rank-disjoint permutation per epoch that restarts mid-epoch.
    EqualBatches        stops a finite (validation) stream on every rank as soon as one rank runs dry.
    newest_loadable     the newest checkpoint in a folder whose file (or DeepSpeed folder) is complete.
    AtomicCheckpointIO  checkpoint files written through a temporary file beside them, whatever $TMPDIR is.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import Sampler


# ------------------------------------------------------------------------------- non-finite losses


class NonFiniteLossError(RuntimeError):
    """Raised when `max_consecutive` steps in a row had a NaN/inf loss."""


class NonFiniteGuard:
    """Counts non-finite losses and decides, identically on every rank, whether to skip the step.

    A rank's NaN must skip the step on *all* ranks: under DDP a rank that skips backward while the
    others run it waits forever in the gradient all-reduce. The decision is one all-reduce of a
    flag per step (`Strategy.reduce_boolean_decision`, a no-op on one device).

    How the step is skipped: training_step returns a NaN loss (Lightning refuses a None loss under
    DDP and DeepSpeed), so every rank runs its backward and no collective is left waiting. Then
      - DDP / single device: `drop_gradients` (called from `on_before_optimizer_step`) sets every
        gradient to None, so the optimizer leaves every weight and its state untouched;
      - DeepSpeed: its ZeRO optimizer sees a non-finite global gradient norm and discards the step.
    Lightning still counts the step (global_step and the LR schedule advance). Under gradient
    accumulation the NaN poisons the accumulated gradients, so the whole window is dropped, on
    every rank alike.

    Args:
        max_consecutive: stop the run (NonFiniteLossError naming the step) after this many
            non-finite losses in a row; 0 never stops.
    """

    def __init__(self, max_consecutive: int = 10):
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0        # total non-finite steps skipped in this run (kept across resumes)
        self.consecutive = 0
        self._pending = False  # a skipped micro-batch in the current optimizer step's window

    def check(self, loss: torch.Tensor, strategy, global_step: int) -> bool:
        """True when this step must be skipped (some rank's loss is NaN/inf)."""
        local = not bool(torch.isfinite(loss.detach()).all())
        if not strategy.reduce_boolean_decision(local, all=False):
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        self._pending = True
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"non-finite loss in {self.consecutive} consecutive training steps, the last at global step "
                f"{global_step} ({self.skipped} skipped in total): stopping. Lower the learning rate, check the "
                f"data, or resume from an earlier checkpoint (max_consecutive_nonfinite={self.max_consecutive})")
        rank_zero_warn(f"non-finite loss at global step {global_step}: step skipped "
                       f"({self.consecutive} in a row, {self.skipped} in total)")
        return True

    @staticmethod
    def skip_output(loss: torch.Tensor) -> torch.Tensor:
        """What training_step returns for a skipped step: a NaN loss whose backward gives NaN
        gradients everywhere it reaches (so DeepSpeed's overflow check fires even for an inf loss)."""
        return loss * float("nan")

    def drop_gradients(self, module: L.LightningModule) -> bool:
        """Before the optimizer step: if this window had a skipped loss, clear the gradients (not
        under DeepSpeed, whose optimizer discards the step itself). Returns whether it dropped."""
        if not self._pending:
            return False
        self._pending = False
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if not isinstance(module.trainer.strategy, DeepSpeedStrategy):
            for p in module.parameters():
                p.grad = None
        return True

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state["skipped"])
        self.consecutive = int(state["consecutive"])


# ----------------------------------------------------------------------------------------- SIGTERM


class CheckpointOnSigterm(L.Callback):
    """Save `<dirpath>/last.ckpt` when the run stops on SIGTERM, then let it exit with status 0.

    Lightning already catches SIGTERM: it forwards the signal to its launched processes, agrees on
    it across ranks and raises `SIGTERMException` (a SystemExit with no code) at the end of the
    current training batch. This callback adds the checkpoint, written by every rank (DeepSpeed
    writes shards) at that batch boundary, so `ckpt_path=last` resumes at exactly that step.
    SLURM's SIGUSR1 requeue (`SLURMEnvironment(auto_requeue=True)`) stays Lightning's.

    Args:
        dirpath: the checkpoint folder; None: that of the trainer's ModelCheckpoint.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.saved_path: Path | None = None

    def _folder(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        cb = trainer.checkpoint_callback
        if cb is None or getattr(cb, "dirpath", None) is None:
            return Path(trainer.default_root_dir) / "checkpoints"
        return Path(cb.dirpath)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self._folder(trainer) / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved_path = path
        rank_zero_info(f"SIGTERM: saved checkpoint at global step {trainer.global_step} to {path} "
                       f"(resume with ckpt_path=last)")


# -------------------------------------------------------------------------------- data position


class ResumableSampler(Sampler[int]):
    """A seeded permutation per epoch, this rank's disjoint share of it, resumable mid-epoch.

    The order depends only on (seed, epoch), never on the global RNG, so a resumed run sees
    exactly the batches the uninterrupted run would have seen. Lightning calls `set_epoch`.

    Args:
        n: dataset size.
        seed: permutation seed.
        rank, world_size: this rank takes every world_size-th index of the permutation (after
            trimming it to a multiple of world_size, so every rank has the same count).
        shuffle: permute (train) or keep the order (validation).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch = 0
        self._skip_epoch, self._skip = 0, 0  # resume: skip this many indices of that epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """The next pass over `epoch` starts after this rank's first `samples_done` indices."""
        self._skip_epoch, self._skip = epoch, samples_done

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        usable = self.n - self.n % self.world_size if self.shuffle else self.n
        return order[:usable][self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        idx = self._indices()
        if self.epoch == self._skip_epoch and self._skip:
            idx = idx[self._skip:]
            self._skip = 0  # only the first pass after a resume is shortened
        return iter(idx)

    def __len__(self) -> int:
        return len(self._indices())


class EqualBatches:
    """Iterate `loader` on every rank in lock step and stop on all ranks when any rank runs out.

    A finite stream split over ranks (validation shards, a dataset that does not divide evenly)
    gives ranks different batch counts; the longer ranks would then wait forever in the next
    collective (a `sync_dist` log, the epoch-end metric sync). One all-reduce of a flag per batch
    settles it; the longer ranks' surplus batches (fewer than the difference in counts) are not
    evaluated. Without torch.distributed (or with one process) it is the loader itself.
    """

    def __init__(self, loader: Iterable):
        self.loader = loader

    def __getattr__(self, name: str):  # `skips`, `dataset`, ... of the wrapped loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            yield from self.loader
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        it = iter(self.loader)
        while True:
            try:
                batch, have = next(it), 1
            except StopIteration:
                batch, have = None, 0
            flag = torch.tensor([have], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if int(flag) == 0:
                return
            yield batch


# ----------------------------------------------------------------------------------- checkpoints

_STEP = re.compile(r"step[=_-]?(\d+)")


def _zip_ok(path: Path) -> bool:
    """A torch.save file is a zip archive: a truncated one has no central directory."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def checkpoint_is_loadable(path: str | Path) -> bool:
    """True when `path` is a complete checkpoint: a `.ckpt` file whose archive is intact, or a
    DeepSpeed checkpoint folder whose `latest` tag names a folder with intact model and optimizer
    shards. Cheap: reads the archives' directories, not the tensors."""
    path = Path(path)
    if path.is_file():
        return _zip_ok(path)
    if not path.is_dir():
        return False
    latest = path / "latest"
    tag = latest.read_text().strip() if latest.is_file() else "checkpoint"
    folder = path / tag
    models = sorted(folder.glob("*model_states.pt"))
    optims = sorted(folder.glob("*optim_states.pt"))
    return bool(models) and all(_zip_ok(f) for f in models + optims)


def _order_key(path: Path) -> tuple[float, float]:
    m = _STEP.search(path.name)
    return (float(m.group(1)) if m else -math.inf, path.stat().st_mtime)


def newest_loadable(checkpoint_dir: str | Path, prefer: str = "last.ckpt") -> Path | None:
    """`prefer` when it loads, else the loadable checkpoint with the highest step in its name
    (then the newest file); None when there is none. Unloadable ones are reported."""
    folder = Path(checkpoint_dir)
    first = folder / prefer
    if first.exists():
        if checkpoint_is_loadable(first):
            return first
        rank_zero_warn(f"{first} is incomplete or corrupt (interrupted write?): falling back to the newest loadable checkpoint")
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != prefer), key=_order_key, reverse=True)
    for p in others:
        if checkpoint_is_loadable(p):
            return p
        rank_zero_warn(f"{p} is incomplete or corrupt: skipped")
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but a `.ckpt` is written as a temporary file in the checkpoint
    folder, fsync'ed and renamed over its name (`metis.atomic.atomic_write`).

    Lightning's own writer stages the file through fsspec, whose temporary file lives in $TMPDIR:
    when that is another file system the final "rename" is a copy, so a kill leaves a truncated
    `step*.ckpt` or an empty `last.ckpt` under the final name, and a stray temporary file in
    $TMPDIR. Here a kill leaves at most a `.<name>.*.tmp` beside the target, which
    `remove_stale_temporaries` clears when the run resumes. Remote paths go to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        from metis.atomic import atomic_write

        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)


def remove_stale_temporaries(checkpoint_dir: str | Path) -> list[Path]:
    """Delete the temporary checkpoint files a killed run left in `checkpoint_dir` (none of them is a
    complete checkpoint: completed ones were renamed); returns what was removed."""
    folder = Path(checkpoint_dir)
    stale = sorted(folder.glob(".*.ckpt.*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        rank_zero_info(f"removed {len(stale)} temporary checkpoint file(s) left by an interrupted write in {folder}")
    return stale
