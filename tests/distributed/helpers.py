"""TEST-ONLY modules and callbacks, importable by `train.py` subprocesses through Hydra `_target_`s:
inject non-finite losses, record what each rank saw, kill or slow down a run at a chosen step."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import lightning as L
import torch

from metis.lightning.masked_module import Stage1PretrainModule


class NaNInjectingStage1(Stage1PretrainModule):
    """Stage-1 module whose loss is NaN at the chosen micro-batches (`batch_idx`), on one rank or all."""

    def __init__(self, *args, nan_batches=(), nan_rank: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_batches = set(int(b) for b in nan_batches)
        self.nan_rank = nan_rank
        self._batch_idx = -1

    def training_step(self, batch, batch_idx):
        self._batch_idx = batch_idx
        return super().training_step(batch, batch_idx)

    def model_step(self, batch):
        loss, stats = super().model_step(batch)
        if self.training and self._batch_idx in self.nan_batches and self.nan_rank in (None, self.global_rank):
            loss = loss * float("nan")
        return loss, stats


class LoRAStage1(Stage1PretrainModule):
    """Stage-1 module whose net is wrapped in peft LoRA (rank `lora_r`) right away: a tiny LoRA run."""

    def __init__(self, net, *args, lora_r: int = 4, **kwargs):
        from metis.checkpoints.lora import wrap_lora

        super().__init__(wrap_lora(net, r=lora_r, trainable_modules=()), *args, **kwargs)


def weights_digest(module: torch.nn.Module, trainer=None) -> str:
    """sha256 of the module's weights; under DeepSpeed of the gathered fp32 master weights (a collective)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if trainer is not None and isinstance(trainer.strategy, DeepSpeedStrategy):
        from metis.checkpoints.deepspeed import gathered_state_dict

        state = gathered_state_dict(module)
    else:
        state = module.state_dict()
    h = hashlib.sha256()
    for name, value in sorted(state.items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def batch_ids(batch: dict) -> list[list[int]]:
    """A batch's sequences as (length, first token, second token): identifies synthetic samples."""
    sem, mask = batch["sem"], batch["sem_mask"]
    return [[int(m.sum()), int(s[0]), int(s[1])] for s, m in zip(sem, mask)]


class Probe(L.Callback):
    """Per rank, one json line per training batch: global step, batch ids, loss, weights digest before
    and after the batch, the non-finite counter. Written to `<dirpath>/probe_rank<r>.jsonl`."""

    def __init__(self, dirpath: str, digest: bool = True):
        self.dirpath = Path(dirpath)
        self.digest = digest
        self._before: str | None = None

    def _file(self, trainer) -> Path:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        return self.dirpath / f"probe_rank{trainer.global_rank}.jsonl"

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._before = weights_digest(module, trainer) if self.digest else None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        guard = getattr(module, "nonfinite_guard", None)
        rec = {"batch_idx": batch_idx, "step": trainer.global_step, "ids": batch_ids(batch),
               "loss": None if loss is None else float(loss), "skipped": guard.skipped if guard else None,
               "before": self._before, "after": weights_digest(module, trainer) if self.digest else None}
        with open(self._file(trainer), "a") as f:
            f.write(json.dumps(rec) + "\n")


class KillAtStep(L.Callback):
    """SIGKILL this process right after global step `step` (no cleanup, like an OOM kill or a node loss)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(L.Callback):
    """Send `signum` to this process after global step `step` (what a scheduler's SIGTERM does)."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class SlowSteps(L.Callback):
    """Sleep after every training batch and write the global step to `<dirpath>/step_rank<r>`."""

    def __init__(self, dirpath: str, seconds: float = 0.2):
        self.dirpath, self.seconds = Path(dirpath), seconds

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"step_rank{trainer.global_rank}").write_text(str(trainer.global_step))
        time.sleep(self.seconds)


def write_token_shards(folder: str | Path, n_shards: int = 4, per_shard: int = 24, codebook_size: int = 32,
                       seed: int = 0) -> str:
    """Token shards for shard-fed runs: random SSL tokens (0.4-1.6 s at 50 Hz) with Emilia-style json.
    Returns the brace pattern of the shards."""
    import numpy as np

    from metis.data.shards import ShardWriter, npy_bytes

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for s in range(n_shards):
        with ShardWriter(folder / f"train-{s:04d}.tar") as w:
            for i in range(per_shard):
                dur = round(float(rng.uniform(0.4, 1.6)), 2)
                tokens = rng.integers(0, codebook_size, int(round(dur * 50))).astype(np.int16)
                meta = {"id": f"s{s}_{i}", "text": "", "duration": dur, "speaker": f"spk{i % 3}", "language": "en"}
                w.write(f"s{s}_{i}", {"json": json.dumps(meta).encode(), "sem.npy": npy_bytes(tokens)})
    return str(folder / f"train-{{0000..{n_shards - 1:04d}}}.tar")


def shard_overrides(pattern: str, num_workers: int) -> list[str]:
    """Hydra overrides feeding the tiny model from `write_token_shards` shards."""
    return ["data=shards", f"data.train_shards='{pattern}'", "data.codebook_size=32", "data.max_tokens=400",
            "data.min_dur=0.2", "data.max_dur=4", f"data.num_workers={num_workers}", "data.shuffle_buffer=10"]
