"""Trivial predictors scored on the model's own masks, so that a masked-token accuracy means something.

A masked generative model is only worth its accuracy if it beats what needs no learning:

    unigram          the most frequent tokens of the training data (counted from the training batches,
                     never from the validation targets): acc@1, acc@10 and cross-entropy
    copy_nearest     each masked frame takes the token of the nearest visible (unmasked, valid) frame of
                     its row; a row with no visible frame takes the unigram's top token
    condition        fine-tuning only: the tokens of the condition's own audio, aligned to the target
                     frames (SE/PLC: the degraded input; TSE: the mixture; VC: the source)

`MaskedBaselines.score` returns them under the names `baseline_<predictor>_<metric>`; the modules log
them as `val/baseline_...` beside `val/acc_top1`. `beaten_by` lists the baselines a model fails to beat.

Axes: b batch, t frames, v vocabulary.
"""

from __future__ import annotations

import math

import torch

ACC_KEY = "acc_top1"


def nearest_visible(tokens: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The token of the nearest visible frame of each frame's row (ties: the earlier frame).

    Args:
        tokens: (b, t) int64. visible: (b, t) bool, the frames a predictor may read.
    Returns:
        predictions (b, t) int64, and found (b, t) bool (False in rows without a visible frame).
    """
    b, t = tokens.shape
    pos = torch.arange(t, device=tokens.device).expand(b, t)
    big = t * 4 + 1
    # index of the last visible frame at or before each frame, and of the first at or after it
    left = torch.where(visible, pos, torch.full_like(pos, -big)).cummax(1).values
    right = torch.where(visible, pos, torch.full_like(pos, big)).flip(1).cummin(1).values.flip(1)
    use_left = (pos - left) <= (right - pos)
    idx = torch.where(use_left, left, right)
    found = idx.ge(0) & idx.lt(t)
    pred = tokens.gather(1, idx.clamp(0, t - 1))
    return pred, found


def condition_tokens(extractor, wavs: list[torch.Tensor], lengths: list[int]) -> torch.Tensor:
    """Tokens of the condition audio (one waveform per row) cropped, or padded with their last token,
    to the target lengths: (b, max length) int64, padding -1."""
    codes = extractor.encode([w.float().cpu() for w in wavs])
    out = torch.full((len(lengths), max(lengths)), -1, dtype=torch.long)
    for i, (c, n) in enumerate(zip(codes, lengths)):
        c = c.long().reshape(-1)[:n]
        if len(c) < n:
            c = torch.cat([c, (c[-1:] if len(c) else torch.full((1,), -1)).expand(n - len(c))])
        out[i, :n] = c
    return out


def shuffled_condition(cond: torch.Tensor, valid: torch.Tensor,
                       donor: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The condition of the next row (a derangement for b > 1), its valid frames repeated cyclically
    to this row's valid length: a condition from another utterance with the shape of this one.

    A batch of one row has no other row: it takes `donor`'s first row (the condition and valid mask of
    another batch), or without a donor its own condition rolled by half its length (misaligned). So
    every batch is scored, and the ablation averages over the same frames as the model's accuracy.

    Args:
        cond: (b, t, c). valid: (b, t) 1 = valid frame. donor: (cond (b', t', c), valid (b', t')).
    """
    b, t = valid.shape
    lens = valid.reshape(b, t).sum(1).long().clamp(min=1)
    if b > 1:
        sources = [(cond[(i + 1) % b], int(lens[(i + 1) % b])) for i in range(b)]
    elif donor is not None:
        sources = [(donor[0][0].to(cond), int(donor[1][0].sum().clamp(min=1)))]
    else:
        half, n = int(lens[0]) // 2, int(lens[0])
        sources = [(torch.cat([cond[0, half:n], cond[0, :half]]), n)]
    out = torch.zeros_like(cond)
    for i, (src, src_len) in enumerate(sources):
        idx = torch.arange(int(lens[i]), device=cond.device) % src_len
        out[i, : int(lens[i])] = src[idx]
    return out


class MaskedBaselines:
    """Unigram counts from the training stream plus the scoring of every baseline on a batch's masks.

    Args:
        codebook_size: v, the token vocabulary.
    """

    def __init__(self, codebook_size: int):
        self.counts = torch.zeros(int(codebook_size), dtype=torch.float64)

    # ---- the unigram's training data --------------------------------------------------------------
    def observe(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """Count the valid training tokens (b, t) of one batch."""
        sel = tokens[valid.reshape(tokens.shape).bool()]
        sel = sel[(sel >= 0) & (sel < self.counts.numel())]
        self.counts += torch.bincount(sel.cpu(), minlength=self.counts.numel()).double()

    @property
    def has_counts(self) -> bool:
        return bool(self.counts.sum() > 0)

    def state_dict(self) -> dict:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        counts = torch.as_tensor(state["counts"], dtype=torch.float64)
        if counts.shape != self.counts.shape:
            raise ValueError(f"baseline token counts have {counts.numel()} entries, the codebook has {self.counts.numel()}")
        self.counts = counts

    # ---- scoring ------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, targets: torch.Tensor, loss_mask: torch.Tensor, valid: torch.Tensor,
              condition_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every baseline on the frames the model is scored on.

        Args:
            targets: (b, t) int64. loss_mask: (b, t) or (b, t, 1), 1 = masked and valid (the model's
                `final_mask`). valid: (b, t), 1 = not padding.
            condition_tokens: (b, t) int64 tokens of the condition audio, aligned to `targets`, or None.
        Returns:
            {"baseline_unigram_acc_top1", ..._acc_top10, ..._loss (when training counts exist),
             "baseline_copy_nearest_acc_top1", "baseline_condition_acc_top1" (with condition_tokens)}.
        """
        sel = loss_mask.reshape(targets.shape).bool()
        if not bool(sel.any()):
            return {}
        gold = targets[sel]
        out: dict[str, torch.Tensor] = {}
        top1 = None
        if self.has_counts:
            counts = self.counts.to(targets.device)
            k = min(10, counts.numel())
            top = counts.topk(k).indices
            top1 = top[0]
            # add-one smoothing: a token unseen in training must not make the loss infinite
            logp = torch.log((counts + 1) / (counts.sum() + counts.numel()))
            out["baseline_unigram_acc_top1"] = (gold == top1).float().mean()
            out["baseline_unigram_acc_top10"] = (gold[:, None] == top[None]).any(-1).float().mean()
            out["baseline_unigram_loss"] = (-logp[gold]).mean().float()
        visible = valid.reshape(targets.shape).bool() & ~sel
        pred, found = nearest_visible(targets, visible)
        if top1 is not None:
            pred = torch.where(found, pred, top1)
            out["baseline_copy_nearest_acc_top1"] = (pred[sel] == gold).float().mean()
        else:  # no unigram yet: a frame without a visible neighbour counts as wrong
            out["baseline_copy_nearest_acc_top1"] = ((pred[sel] == gold) & found[sel]).float().mean()
        if condition_tokens is not None:
            out["baseline_condition_acc_top1"] = (condition_tokens.to(targets.device)[sel] == gold).float().mean()
        return out


def baseline_accuracies(metrics: dict[str, float], prefix: str = "val/") -> dict[str, float]:
    """{baseline name: acc@1} of the baselines in a metrics dict (`val/baseline_<name>_acc_top1`)."""
    head, tail = f"{prefix}baseline_", f"_{ACC_KEY}"
    return {k[len(head):-len(tail)]: float(v) for k, v in metrics.items()
            if k.startswith(head) and k.endswith(tail) and not math.isnan(float(v))}


def beaten_by(metrics: dict[str, float], prefix: str = "val/") -> list[str]:
    """The baselines (and condition ablations) whose acc@1 is at least the model's: an empty list means
    the model beats them all."""
    model = metrics.get(f"{prefix}{ACC_KEY}")
    if model is None:
        return []
    rivals = {f"baseline {k}": v for k, v in baseline_accuracies(metrics, prefix).items()}
    for name in ("cond_shuffled", "cond_zero"):
        if f"{prefix}{ACC_KEY}_{name}" in metrics:
            rivals[name.replace("_", " ")] = float(metrics[f"{prefix}{ACC_KEY}_{name}"])
    return [name for name, acc in rivals.items() if acc >= float(model)]


def report(metrics: dict[str, float], prefix: str = "val/") -> str:
    """Lines 'model vs baselines' for the end of a run, with a flag when the model does not beat them."""
    model = metrics.get(f"{prefix}{ACC_KEY}")
    if model is None:
        return "no validation metrics: model vs baselines not measured"
    lines = [f"held-out masked acc@1: model {float(model):.4f}"
             + (f" (acc@10 {float(metrics[prefix + 'acc_top10']):.4f}, loss {float(metrics[prefix + 'loss']):.4f})"
                if f"{prefix}acc_top10" in metrics and f"{prefix}loss" in metrics else "")]
    for name, acc in baseline_accuracies(metrics, prefix).items():
        lines.append(f"  baseline {name:<14} {acc:.4f}")
    if f"{prefix}baseline_unigram_loss" in metrics:
        lines.append(f"  baseline unigram loss    {float(metrics[prefix + 'baseline_unigram_loss']):.4f}")
    for name in ("cond_shuffled", "cond_zero"):
        key = f"{prefix}{ACC_KEY}_{name}"
        if key in metrics:
            lines.append(f"  model, {name.replace('_', ' '):<16} {float(metrics[key]):.4f}")
    losing = beaten_by(metrics, prefix)
    lines.append(f"WARNING: the model does not beat {', '.join(losing)}" if losing
                 else "the model beats every baseline" + (" and its condition ablations" if f"{prefix}{ACC_KEY}_cond_shuffled" in metrics else ""))
    return "\n".join(lines)
