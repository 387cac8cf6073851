"""Iterative masked decoding (MaskGIT-style reverse diffusion), shared by stage 1 and S2A.

Follows ARCHITECTURE.md §2.4 step for step, including its quirks (Q6: the remask count comes from
batch row 0; Q7: an early stop keeps Gumbel-sampled tokens). The random draws come from an
injectable `UniformNoise` so that recorded draws can be replayed exactly.

Axes: b batch, t target frames, v vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


class UniformNoise:
    """Source of U(0, 1) draws: torch's RNG (optionally a given generator), in the reference's order."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        gen_device = self.generator.device if self.generator is not None else torch.device("cpu")
        # Draw where the generator lives (CPU by default, as the reference does) and move.
        return torch.rand(shape, generator=self.generator, device=gen_device).to(device)


class ReplayNoise(UniformNoise):
    """Replays recorded uniform tensors in call order; a shape mismatch or a missing draw is an error."""

    def __init__(self, draws: Iterable[torch.Tensor]):
        super().__init__()
        self.draws = list(draws)
        self.used = 0

    def __call__(self, shape, device):
        if self.used >= len(self.draws):
            raise RuntimeError(f"replay noise exhausted after {self.used} draws (next shape {tuple(shape)})")
        u = self.draws[self.used]
        if tuple(u.shape) != tuple(shape):
            raise RuntimeError(f"replay draw {self.used} has shape {tuple(u.shape)}, decoder asked for {tuple(shape)}")
        self.used += 1
        return u.to(device)


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel noise from uniforms, with the reference's epsilons."""
    return -torch.log(-torch.log(u + 1e-10) + 1e-10)


def top_k_filter(logits: torch.Tensor, filter_thres: float) -> torch.Tensor:
    """Keep the k = ceil((1 - filter_thres) * v) largest logits, set the rest to -inf."""
    k = math.ceil((1 - filter_thres) * logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, cfg: float, rescale_cfg: float) -> torch.Tensor:
    """Classifier-free guidance on hidden states with std rescale.

    std is the unbiased std over the whole (b, t, d) tensor: one scalar for the batch (Q6).
    """
    guided = cond + cfg * (cond - uncond)
    rescaled = guided * cond.std() / guided.std()
    return rescale_cfg * rescaled + (1 - rescale_cfg) * guided


def iterative_decode(
    logits_fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
    batch_size: int,
    length: int,
    n_timesteps: int,
    *,
    temp: float,
    filter_thres: float,
    device: torch.device,
    noise: UniformNoise | None = None,
    preschedule_mask_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode `length` tokens per row from an all-masked start in `n_timesteps` steps.

    Args:
        logits_fn: (ids (b, t) long, is_masked (b, t) bool, time t_i) -> logits (b, t, v), with any
            CFG already applied. Masked positions hold id 0.
        preschedule_mask_indices: (t,) fixed remask order; its first n_next entries are remasked.
    Returns:
        ids (b, t).
    """
    noise = noise if noise is not None else UniformNoise()
    b, n, steps = batch_size, length, n_timesteps
    ids = torch.zeros(b, n, dtype=torch.long, device=device)
    is_masked = torch.ones(b, n, dtype=torch.bool, device=device)
    for i in range(steps):
        t = 1 - i * (1 / steps)
        logits = top_k_filter(logits_fn(ids, is_masked, t), filter_thres)
        if i == steps - 1 and steps > 1:
            sampled = logits.argmax(dim=-1)
        else:
            tau = 0.2 if steps == 1 else temp * t
            sampled = (logits / max(tau, 1e-3) + gumbel(noise(tuple(logits.shape), device))).argmax(dim=-1)
        ids = torch.where(is_masked, sampled, ids)

        probs = F.softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]  # (b, t)
        score = 1 - (probs + t * gumbel(noise((b, n), device)))

        t_next = torch.full((b,), 1 - (i + 1) * (1 / steps), dtype=torch.float32)
        n_next = int(torch.floor(torch.sin(t_next * math.pi / 2) * n)[0])  # row 0 decides for all (Q6)
        if n_next <= 0:
            break  # early stop keeps the sampled tokens (Q7)
        score = score.masked_fill(~is_masked, -torch.finfo(torch.float32).max)
        if preschedule_mask_indices is not None:
            remask = preschedule_mask_indices[:n_next].to(device)[None, :].expand(b, -1)
        else:
            remask = score.topk(n_next, dim=-1).indices
        is_masked = torch.zeros_like(is_masked).scatter_(1, remask, True)
        ids = ids.masked_fill(is_masked, 0)
    return ids
