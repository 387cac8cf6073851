"""Codebook health during codec training: usage, perplexity, and dead-code restarts.

A VQ codebook can collapse: a few codes win every lookup, the rest never move again (their codebook
loss has no gradient when no frame picks them). Usage is counted over a window of training steps:

    usage       fraction of the k codes picked at least once in the window        (1 = all alive)
    perplexity  exp(entropy of the code histogram)                                 (k = uniform use)

A restart re-seeds every dead code (unused in the window) with the projected latent z_e of a random
frame of the current batch, so it sits where the data is and gets picked again (the usual fix since
Jukebox / SoundStream). Works on any `ResidualVQ` (the acoustic codec's 12 stages, RepCodec's one).
"""

from __future__ import annotations

import torch

from metis.models.acoustic_codec import ResidualVQ


class CodebookUsage:
    """Code histograms of `num_stages` codebooks of `codebook_size` entries, accumulated until `reset()`."""

    def __init__(self, num_stages: int, codebook_size: int):
        self.counts = torch.zeros(num_stages, codebook_size, dtype=torch.long)
        self.steps = 0

    def update(self, codes: torch.Tensor) -> None:
        """codes (q, ...) int: the codes each stage picked in one step."""
        codes = codes.detach().reshape(codes.shape[0], -1).cpu()
        for i, c in enumerate(codes[: self.counts.shape[0]]):
            self.counts[i] += torch.bincount(c, minlength=self.counts.shape[1])
        self.steps += 1

    def usage(self) -> torch.Tensor:
        """(q,) fraction of codes used at least once."""
        return (self.counts > 0).float().mean(1)

    def perplexity(self) -> torch.Tensor:
        """(q,) exp(entropy) of each stage's code histogram (0-count codes contribute nothing)."""
        p = self.counts.float() / self.counts.sum(1, keepdim=True).clamp(min=1)
        entropy = -(p * p.clamp(min=1e-12).log()).sum(1)
        return entropy.exp()

    def dead(self) -> list[torch.Tensor]:
        """Per stage, the indices of the codes unused in the window."""
        return [(c == 0).nonzero().flatten() for c in self.counts]

    def reset(self) -> None:
        self.counts.zero_()
        self.steps = 0


@torch.no_grad()
def restart_dead_codes(quantizer: ResidualVQ, z: torch.Tensor, dead: list[torch.Tensor],
                       generator: torch.Generator | None = None) -> int:
    """Re-seed the dead codes of each stage from the batch: z (b, c, t), the quantizer's input.

    Stage i sees the residual the stages before it leave (with their restarted codebooks), exactly
    as in training without quantizer dropout. Returns the number of codes restarted.
    """
    was_training = quantizer.training
    quantizer.eval()
    restarted = 0
    residual = z.detach()
    try:
        for vq, idx in zip(quantizer.quantizers, dead):
            z_e = vq.in_project(residual)  # (b, e, t)
            if len(idx):
                frames = z_e.transpose(1, 2).reshape(-1, z_e.shape[1])  # (b*t, e)
                pick = torch.randint(frames.shape[0], (len(idx),), generator=generator).to(frames.device)
                vq.codebook.weight[idx.to(frames.device)] = frames[pick].to(vq.codebook.weight.dtype)
                restarted += len(idx)
            z_q, *_ = vq(residual)
            residual = residual - z_q
    finally:
        quantizer.train(was_training)
    return restarted
