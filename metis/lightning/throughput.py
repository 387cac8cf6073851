"""Whole-step training throughput and model FLOPs utilisation (MFU).

The modules record what each training step did (`MaskedGenerativeModule.step_work`: utterances,
real audio frames, model FLOPs); `TrainThroughput` times whole steps between consecutive
`on_train_batch_end` calls (data loading, forward, backward and the optimizer step; CUDA synchronised
first; validation time excluded) and feeds Lightning's `Throughput` meter, which averages over a
window of steps and divides by the device peak for MFU. Logged per step and in the progress bar:

    train/tokens_per_s          real (non-padding) frames per second, all devices
    train/audio_seconds_per_s   the same in seconds of audio (frames / frame_rate)
    train/mfu                   model FLOPs per second per device / peak FLOP/s of the device

Model FLOPs of a training step (forward + backward) over utterances of L_i tokens (prefix included):

    6 · N · Σ L_i  +  12 · n_layers · d · Σ L_i²

N = weights of the matmuls applied to every token (attention and MLP projections, cond_mlp, the
adapter, one output head); the adaptive-norm gains and the time MLP run once per utterance and are
left out. The second term is attention: QKᵀ and AV, 2 · L² · d each per layer forward, 3× for
forward + backward. Padding is not model work and is not counted, packed or not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from torch import nn

from metis.models.llama_nar import AdaptiveRMSNorm, LlamaNAR


def per_token_matmul_params(net: nn.Module) -> int:
    """N: weights of the Linear layers applied to every token of `net` (a MetisStage1 or MaskGCTS2A,
    plain or wrapped by peft): all Linears except the adaptive-norm gains and the time MLP, and, for
    a multi-head S2A, one head (a step predicts one layer per utterance)."""
    skip: set[int] = set()
    for m in net.modules():
        if isinstance(m, AdaptiveRMSNorm):
            skip.update(id(p) for p in m.parameters())
        elif isinstance(m, LlamaNAR):
            skip.update(id(p) for p in m.diff_step_mlp.parameters())
    heads = getattr(net, "to_logits", None)
    if isinstance(heads, nn.ModuleList):
        for extra in heads[1:]:
            skip.update(id(p) for p in extra.parameters())
    return sum(m.weight.numel() for m in net.modules()
               if isinstance(m, nn.Linear) and id(m.weight) not in skip)


def training_flops(n_params: int, n_layers: int, hidden: int, seq_lens: Sequence[int] | torch.Tensor) -> int:
    """Model FLOPs of one forward + backward over utterances of `seq_lens` tokens (module docstring)."""
    lens = torch.as_tensor(seq_lens, dtype=torch.float64)
    return int(6 * n_params * lens.sum() + 12 * n_layers * hidden * (lens ** 2).sum())


def _compute_dtype(precision: str) -> torch.dtype:
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


class TrainThroughput(L.Callback):
    """Log whole-step, synchronised throughput and MFU (module docstring).

    Args:
        window: steps in the rolling average (at least 2: the first value comes after `window` steps).
        peak_flops: peak FLOP/s of one device for `train/mfu`; None: Lightning's table for the device
            and precision (known NVIDIA/TPU chips; none on CPU, where MFU is then not logged).
        frame_rate: frames per second of audio (50 Hz tokens).
        prog_bar: also show the three values in the progress bar.
    """

    def __init__(self, window: int = 5, peak_flops: float | None = None, frame_rate: float = 50.0, prog_bar: bool = True):
        if window < 2:
            raise ValueError(f"window must be at least 2 steps, got {window}")
        self.window, self.peak_flops, self.frame_rate, self.prog_bar = window, peak_flops, frame_rate, prog_bar
        self.meter: Throughput | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        peak = self.peak_flops
        if peak is None:
            peak = get_available_flops(trainer.strategy.root_device, _compute_dtype(trainer.precision))
        self.meter = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=self.window)

    def on_train_start(self, trainer, pl_module) -> None:
        self.meter.reset()
        self._t0, self._paused, self._val_start = time.perf_counter(), 0.0, None
        self._batches = self._samples = self._frames = 0

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if getattr(self, "_val_start", None) is not None:
            self._paused += time.perf_counter() - self._val_start
            self._val_start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        work = getattr(pl_module, "step_work", None)
        if work is None or self.meter is None:
            return
        pl_module.step_work = None
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)  # kernels launched are not kernels run
        elapsed = time.perf_counter() - self._t0 - self._paused
        self._batches += 1
        self._samples += max(int(work["samples"]), 1)
        self._frames += max(int(work["frames"]), 1)
        self.meter.update(time=elapsed, batches=self._batches, samples=self._samples, lengths=self._frames,
                          flops=int(work["flops"]))
        metrics = self.meter.compute()
        per_device = metrics.get("device/items_per_sec")
        if per_device is None:
            return
        log = dict(on_step=True, on_epoch=False, prog_bar=self.prog_bar, batch_size=1, rank_zero_only=True)
        tokens = per_device * trainer.world_size
        pl_module.log("train/tokens_per_s", tokens, **log)
        pl_module.log("train/audio_seconds_per_s", tokens / self.frame_rate, **log)
        if "device/mfu" in metrics:
            pl_module.log("train/mfu", metrics["device/mfu"], **log)
