"""Draws from a passed `torch.Generator` (the only source of randomness in `metis.conditions`)."""

from __future__ import annotations

import math

import torch


def uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    """A float drawn uniformly from [lo, hi] (lo == hi gives lo, still consuming one draw)."""
    u = float(torch.rand((), generator=generator))
    return float(lo) + (float(hi) - float(lo)) * u


def log_uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    """A positive float whose log is uniform over [log lo, log hi] (for ratios such as 0.85..1.15)."""
    return math.exp(uniform(generator, math.log(lo), math.log(hi)))


def bernoulli(generator: torch.Generator, p: float) -> bool:
    """True with probability p; always consumes one draw so later draws do not depend on p."""
    return float(torch.rand((), generator=generator)) < p


def randint(generator: torch.Generator, n: int) -> int:
    """An int in [0, n)."""
    if n <= 0:
        raise ValueError(f"randint: n must be positive, got {n}")
    return int(torch.randint(n, (), generator=generator))


def check_range(name: str, rng: tuple[float, float]) -> tuple[float, float]:
    """Validate a (lo, hi) constructor argument; the error names the argument."""
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (lo, hi) pair of numbers, got {rng!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a finite (lo, hi) pair with lo <= hi, got {rng!r}")
    return lo, hi


def check_prob(name: str, p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)
