"""Learning-rate schedules as LambdaLR factors of the peak lr (step counts optimizer steps)."""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then decay ∝ 1/sqrt(step) (MaskGCT's schedule), continuous at warmup."""
    step = step + 1
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return math.sqrt(max(warmup_steps, 1) / step)


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup, then half a cosine from 1 down to min_ratio at total_steps."""
    step = step + 1
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def constant_factor(step: int, warmup_steps: int) -> float:
    step = step + 1
    return step / warmup_steps if warmup_steps > 0 and step < warmup_steps else 1.0


def warmup_inverse_sqrt(optimizer: Optimizer, warmup_steps: int = 32000) -> LambdaLR:
    return LambdaLR(optimizer, partial(inverse_sqrt_factor, warmup_steps=warmup_steps))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, partial(cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio))


def warmup_constant(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    return LambdaLR(optimizer, partial(constant_factor, warmup_steps=warmup_steps))
