"""Masked-token objective: cross-entropy and top-k accuracy over masked, non-padding frames only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy over the frames where loss_mask is 1, plus top-1/top-10 accuracy there.

    Args:
        logits: (b, t, v). targets: (b, t) int64. loss_mask: (b, t) or (b, t, 1), 1 = masked and valid.
    Returns:
        loss (scalar, 0 with a graph when nothing is masked), and detached stats incl. `n_masked`.
    """
    sel = loss_mask.reshape(targets.shape).bool()
    n = sel.sum()
    picked = logits[sel].float()  # (n, v)
    gold = targets[sel]
    if n == 0:  # a batch of only prompt/padding: no signal, but keep the graph for DDP
        zero = logits.sum() * 0.0
        return zero, {"n_masked": n.detach(), "acc_top1": zero.detach(), "acc_top10": zero.detach()}
    loss = F.cross_entropy(picked, gold)
    with torch.no_grad():
        k = min(10, picked.shape[-1])
        topk = picked.topk(k, dim=-1).indices
        acc1 = (topk[:, 0] == gold).float().mean()
        acc10 = (topk == gold[:, None]).any(-1).float().mean()
    return loss, {"n_masked": n.detach(), "acc_top1": acc1, "acc_top10": acc10}
