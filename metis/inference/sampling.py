"""Batched, per-sample masked decoding for stage 1 and S2A (ARCHITECTURE.md §2.4, §3.4).

The models' own `reverse_diffusion` reproduces the reference exactly, quirks included: the CFG rescale
std is taken over the whole batch and the remask count comes from row 0 (Q6), so a sample's result
depends on its batch mates. This module decodes a padded batch so that every row gets what it would
get alone:

- rows have their own lengths (prompt, target, phone prefix): each row is packed left
  ([phones ; prompt ; target ; padding], RoPE positions as if alone) with a key padding mask;
- the remask count n_next = floor(sin(π t_{i+1} / 2) · T_r) and the early stop (Q7) are per row;
- the CFG rescale std is per row, over that row's valid (T_r, d) block;
- every row draws its uniforms from its own `UniformNoise` (per-sample generators or replay).

With `fast=False` every op on a row is the reference's op on that row alone, so batch size 1
reproduces `MetisStage1.reverse_diffusion` / `MaskGCTS2A.reverse_diffusion` token for token with the
same noise (tests/inference/test_sampling.py). `fast=True` changes the arithmetic, not the maths:

- conditional and unconditional CFG passes in one forward of 2b rows;
- the condition embeddings are computed once per call (per layer for S2A) instead of every step:
  cond_mlp(phone prefix), the adapter output, cond_mlp(semantic condition + layer embedding);
- Gumbel-max and the confidence softmax over the k kept logits only (the other v - k are -inf);
- vectorised masked per-row std;
- bf16 autocast for the transformer on CUDA (`autocast=True`).

Axes: b batch, n padded target frames, l padded sequence, d hidden size, v vocabulary, k top-k.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metis.models.decoding import UniformNoise, gumbel, top_k_filter

LogitsFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class DecodeConfig:
    """Sampling settings of one decoding call (one layer for S2A)."""

    n_timesteps: int
    temp: float
    filter_thres: float
    cfg: float
    rescale_cfg: float


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _draw(noises: Sequence[UniformNoise], lengths: Sequence[int], last_dim: int | None, n: int,
          rows: Sequence[int], device: torch.device) -> torch.Tensor:
    """(b, n[, last_dim]) uniforms: row r's own draw of shape (1, T_r[, last_dim]) in its first T_r frames."""
    b = len(lengths)
    shape = (b, n) if last_dim is None else (b, n, last_dim)
    u = torch.full(shape, 0.5, device=device)
    for r in rows:
        s = (1, lengths[r]) if last_dim is None else (1, lengths[r], last_dim)
        u[r, : lengths[r]] = noises[r](s, device)[0]
    return u


def per_sample_decode(logits_fn: LogitsFn, lengths: Sequence[int], n_timesteps: int, *, temp: float,
                      filter_thres: float, noises: Sequence[UniformNoise], device: torch.device,
                      fast: bool = False) -> torch.Tensor:
    """Iterative masked decoding of a padded batch, each row as if decoded alone (§2.4 per row).

    Args:
        logits_fn: (ids (b, n), is_masked (b, n) bool, t_i) -> logits (b, n, v) float32, CFG applied.
            Padding frames (j >= T_r) are never masked; their logits are ignored.
        lengths: T_r per row (>= 1).
        noises: one uniform source per row, drawn in the reference's order (sample (1,T_r,v), then
            choice (1,T_r)) and only while the row is still decoding.
        fast: Gumbel-max and softmax over the top-k logits only (same maths, cheaper).
    Returns:
        ids (b, n); frames beyond T_r are 0.
    """
    b, n, steps = len(lengths), max(lengths), n_timesteps
    if len(noises) != b:
        raise ValueError(f"need one noise source per row: {len(noises)} for {b} rows")
    if min(lengths) < 1:
        raise ValueError(f"every row needs at least one target frame, got lengths {list(lengths)}")
    lens = torch.tensor(lengths, device=device)
    valid = torch.arange(n, device=device)[None, :] < lens[:, None]
    ids = torch.zeros(b, n, dtype=torch.long, device=device)
    is_masked = valid.clone()
    active = list(range(b))
    neg = -torch.finfo(torch.float32).max
    for i in range(steps):
        t = 1 - i * (1 / steps)
        logits = logits_fn(ids, is_masked, t).float()
        v = logits.shape[-1]
        last = i == steps - 1 and steps > 1
        tau = 0.2 if steps == 1 else temp * t
        if fast:
            k = math.ceil((1 - filter_thres) * v)
            top, idx = logits.topk(k, dim=-1)  # (b, n, k)
            if last:
                choice = top.argmax(dim=-1, keepdim=True)
            else:
                u = _draw(noises, lengths, v, n, active, device).gather(-1, idx)
                choice = (top / max(tau, 1e-3) + gumbel(u)).argmax(dim=-1, keepdim=True)
            sampled = idx.gather(-1, choice)[..., 0]
            probs = F.softmax(top, dim=-1).gather(-1, choice)[..., 0]
        else:
            logits = top_k_filter(logits, filter_thres)
            if last:
                sampled = logits.argmax(dim=-1)
            else:
                u = _draw(noises, lengths, v, n, active, device)
                sampled = (logits / max(tau, 1e-3) + gumbel(u)).argmax(dim=-1)
            probs = F.softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]
        act = torch.zeros(b, dtype=torch.bool, device=device)
        act[active] = True
        ids = torch.where(is_masked & act[:, None], sampled, ids)
        score = 1 - (probs + t * gumbel(_draw(noises, lengths, None, n, active, device)))

        t_next = torch.full((1,), 1 - (i + 1) * (1 / steps), dtype=torch.float32)
        sin_next = torch.sin(t_next * math.pi / 2)
        still = []
        new_mask = torch.zeros_like(is_masked)
        for r in active:
            n_next = int(torch.floor(sin_next * lengths[r])[0])  # this row's own count (Q6 fixed)
            if n_next <= 0:
                continue  # this row stops here with its sampled tokens (Q7)
            sr = score[r, : lengths[r]].masked_fill(~is_masked[r, : lengths[r]], neg)
            new_mask[r, sr.topk(n_next).indices] = True
            still.append(r)
        is_masked = new_mask
        ids = ids.masked_fill(is_masked, 0)
        active = still
        if not active:
            break
    return ids


def _pack(parts: Sequence[Sequence[torch.Tensor]], d: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of variable-length pieces -> (b, l, d) left-packed, (b, l) validity mask."""
    rows = [torch.cat(list(p), dim=0) if len(p) else torch.zeros(0, d, device=device, dtype=dtype) for p in parts]
    lmax = max(r.shape[0] for r in rows)
    x = torch.zeros(len(rows), lmax, d, device=device, dtype=dtype)
    mask = torch.zeros(len(rows), lmax, device=device)
    for i, r in enumerate(rows):
        x[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return x, mask


class _Placer:
    """Scatters target frames (b, n, d) into packed sequences after per-row offsets, and gathers them back."""

    def __init__(self, static: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]):
        self.static = static  # (b, l, d): everything but the target frames
        b, l, d = static.shape
        n = max(lengths)
        dev = static.device
        j = torch.arange(n, device=dev)[None, :]
        off = torch.tensor(offsets, device=dev)[:, None]
        lens = torch.tensor(lengths, device=dev)[:, None]
        # target frame j of row r sits at position off_r + j (padding frames point at slot l: dropped)
        self.pos = torch.where(j < lens, off + j, torch.full_like(j, l))  # (b, n)
        self.l = l

    def place(self, target: torch.Tensor) -> torch.Tensor:
        b, n, d = target.shape
        x = torch.cat([self.static, self.static.new_zeros(b, 1, d)], dim=1)
        x = x.scatter(1, self.pos[..., None].expand(-1, -1, d), target.to(x.dtype))
        return x[:, : self.l]

    def take(self, out: torch.Tensor) -> torch.Tensor:
        d = out.shape[-1]
        out = torch.cat([out, out.new_zeros(out.shape[0], 1, d)], dim=1)
        return out.gather(1, self.pos[..., None].expand(-1, -1, d))


def _cfg(e_c: torch.Tensor, e_u: torch.Tensor, lengths: Sequence[int], cfg: float, rescale_cfg: float,
         fast: bool) -> torch.Tensor:
    """Per-row CFG with std rescale: g = e_c + cfg (e_c - e_u); g' = g · std_r(e_c) / std_r(g)."""
    g = e_c + cfg * (e_c - e_u)
    if fast:
        b, n, d = e_c.shape
        valid = (torch.arange(n, device=e_c.device)[None, :] < torch.tensor(lengths, device=e_c.device)[:, None])
        w = valid[..., None].to(torch.float32)
        cnt = w.sum(dim=(1, 2)) * d

        def std(x):
            x = x.float()
            mean = (x * w).sum(dim=(1, 2)) / cnt
            var = (((x - mean[:, None, None]) * w) ** 2).sum(dim=(1, 2)) / (cnt - 1)
            return var.sqrt()

        scale = (std(e_c) / std(g)).to(g.dtype)[:, None, None]
        return rescale_cfg * (g * scale) + (1 - rescale_cfg) * g
    out = torch.empty_like(g)
    for r, T in enumerate(lengths):  # torch's unbiased std over this row's (T, d) block, as when alone
        c, gr = e_c[r : r + 1, :T], g[r : r + 1, :T]
        out[r : r + 1, :T] = rescale_cfg * (gr * c.std() / gr.std()) + (1 - rescale_cfg) * gr
        out[r, T:] = g[r, T:]
    return out


def _estimate(estimator, x_c, m_c, x_u, m_u, t_i: float, fast: bool):
    """Conditional (and unconditional) estimator passes; one batched forward of 2b rows when fast."""
    b = x_c.shape[0]
    t = torch.full((b,), t_i, dtype=torch.float32, device=x_c.device)
    if x_u is None:
        return estimator(x_c, t, m_c), None
    if not fast:
        return estimator(x_c, t, m_c), estimator(x_u, t, m_u)
    l = max(x_c.shape[1], x_u.shape[1])
    x = torch.cat([F.pad(x_c, (0, 0, 0, l - x_c.shape[1])), F.pad(x_u, (0, 0, 0, l - x_u.shape[1]))])
    m = torch.cat([F.pad(m_c, (0, l - m_c.shape[1])), F.pad(m_u, (0, l - m_u.shape[1]))])
    e = estimator(x, torch.cat([t, t]), m)
    return e[:b, : x_c.shape[1]], e[b:, : x_u.shape[1]]


@torch.no_grad()
def stage1_decode(model, prompts: Sequence[torch.Tensor], target_lens: Sequence[int], cfg: DecodeConfig, *,
                  noises: Sequence[UniformNoise], phones: Sequence[torch.Tensor | None] | None = None,
                  finetune_conds: Sequence[torch.Tensor | None] | None = None, fast: bool = False,
                  autocast: bool = False) -> list[torch.Tensor]:
    """Per-sample batched `MetisStage1.reverse_diffusion`.

    Args:
        model: a MetisStage1.
        prompts: per row (tp_r,) prompt ids (tp_r may be 0).
        target_lens: T_r per row.
        phones: per row (p_r,) phone ids or None (rows of one call all have phones or none).
        finetune_conds: per row (tp_r + T_r, c) adapter features or None.
        noises: one uniform source per row.
    Returns:
        per row the generated ids (T_r,).
    """
    b = len(prompts)
    dev = model.cond_emb.weight.device
    dtype = model.cond_emb.weight.dtype
    d = model.hidden_size
    phones = phones or [None] * b
    finetune_conds = finetune_conds or [None] * b
    est = model.diff_estimator
    static, offsets, tgt_adapt = [], [], []
    for r in range(b):
        p = prompts[r].to(dev).long()
        tp, T = p.shape[0], int(target_lens[r])
        pieces = []
        if phones[r] is not None:
            pieces.append(est.cond_mlp(model.phone_prefix(phones[r].to(dev).long()[None]))[0])
        pe = model.cond_emb(p[None])[0]  # (tp, d)
        a = None
        if finetune_conds[r] is not None:
            f = finetune_conds[r].to(dev, dtype)
            if f.shape[0] != tp + T:
                raise ValueError(f"row {r}: finetune_cond has {f.shape[0]} frames, prompt + target = {tp} + {T}")
            a = model.adapter(f[None])[0]  # (tp + T, d), once per call
            pe = pe + a[:tp]
        pieces.append(pe)
        static.append(pieces)
        offsets.append(sum(x.shape[0] for x in pieces))
        tgt_adapt.append(None if a is None else a[tp:])
    n = max(int(x) for x in target_lens)
    adapt_t = None
    if any(a is not None for a in tgt_adapt):
        if not all(a is not None for a in tgt_adapt):
            raise ValueError("rows of one batch must all have finetune_cond or none")
        adapt_t = torch.zeros(b, n, d, device=dev, dtype=dtype)
        for r, a in enumerate(tgt_adapt):
            adapt_t[r, : a.shape[0]] = a
    lengths = [int(x) for x in target_lens]
    full = [s + [torch.zeros(T, d, device=dev, dtype=dtype)] for s, T in zip(static, lengths)]
    base, m_c = _pack(full, d, dev, dtype)
    placer = _Placer(base, offsets, lengths)
    m_u = (torch.arange(n, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]).float()

    def logits_fn(ids, is_masked, t_i):
        cur = model.embed_input(ids, is_masked)  # (b, n, d)
        tgt = cur if adapt_t is None else cur + adapt_t
        with _autocast(dev, autocast):
            e_c, e_u = _estimate(est, placer.place(tgt), m_c, tgt if cfg.cfg > 0 else None, m_u, t_i, fast)
            e = placer.take(e_c)
            if e_u is not None:
                e = _cfg(e, e_u, lengths, cfg.cfg, cfg.rescale_cfg, fast)
            return model.to_logit(e).float()

    with torch.no_grad():
        ids = per_sample_decode(logits_fn, lengths, cfg.n_timesteps, temp=cfg.temp, filter_thres=cfg.filter_thres,
                                noises=noises, device=dev, fast=fast)
    return [ids[r, :T] for r, T in enumerate(lengths)]


@torch.no_grad()
def s2a_decode(model, conds: Sequence[torch.Tensor], prompts: Sequence[torch.Tensor], layer_cfgs: Sequence[DecodeConfig],
               *, noises: Sequence[UniformNoise], gt_codes: Sequence[torch.Tensor] | None = None, fast: bool = False,
               autocast: bool = False) -> list[torch.Tensor]:
    """Per-sample batched `MaskGCTS2A.reverse_diffusion`.

    Args:
        model: a MaskGCTS2A with Nq layers.
        conds: per row the semantic ids (p_r + T_r,) of prompt + target.
        prompts: per row the acoustic prompt codes (p_r, >= Nq) (p_r may be 0); the first Nq layers are used
            (the 1-layer model gets the 12-layer prompt, as in the reference).
        layer_cfgs: one DecodeConfig per layer (entries for given gt layers are unused).
        gt_codes: per row (T_r, g) given first layers.
    Returns:
        per row codes (T_r, Nq).
    """
    nq, d = model.num_quantizer, model.hidden_size
    b = len(conds)
    dev = model.cond_emb.weight.device
    dtype = model.cond_emb.weight.dtype
    est = model.diff_estimator
    if len(layer_cfgs) < nq:
        raise ValueError(f"need one DecodeConfig per S2A layer ({nq}), got {len(layer_cfgs)}")
    ps = [int(p.shape[0]) for p in prompts]
    lengths = [int(c.shape[0]) - p for c, p in zip(conds, ps)]
    for r, T in enumerate(lengths):
        if T <= 0:
            raise ValueError(f"row {r}: {conds[r].shape[0]} semantic frames, not more than the {ps[r]} acoustic prompt frames")
        if prompts[r].dim() != 2 or prompts[r].shape[1] < nq:
            raise ValueError(f"row {r}: acoustic prompt must be (p, >= {nq}) codes, got {tuple(prompts[r].shape)}")
    n = max(lengths)
    g = 0 if gt_codes is None else gt_codes[0].shape[-1]
    cond_emb = [model.cond_emb(c.to(dev).long()[None])[0] for c in conds]  # (p + T, d)
    prompt_emb = []
    for p in prompts:
        p = p.to(dev).long()[None, :, :nq]
        prompt_emb.append(sum(model.token_emb[q](p[:, :, q]) for q in range(nq))[0])  # (p, d)
    mask_token = model.mask_emb.weight[0]
    codes = torch.zeros(b, n, nq, dtype=torch.long, device=dev)
    cum = torch.zeros(b, n, d, device=dev, dtype=dtype)
    for q in range(g):
        for r in range(b):
            codes[r, : lengths[r], q] = gt_codes[r][:, q].to(dev)
        cum = cum + model.token_emb[q](codes[:, :, q])
    m_u = (torch.arange(n, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]).float()

    for layer in range(g, nq):
        lc = layer_cfgs[layer]
        finer = (nq - 1 - layer) * mask_token
        emb = model.token_emb[layer]
        # cond_mlp(condition + layer vector), once per layer instead of once per step
        cm = [est.cond_mlp(c[None] + model.layer_emb.weight[layer])[0] for c in cond_emb]
        statics = [[prompt_emb[r] + cm[r][: ps[r]], torch.zeros(lengths[r], d, device=dev, dtype=dtype)] for r in range(b)]
        base, m_c = _pack(statics, d, dev, dtype)
        placer = _Placer(base, ps, lengths)
        cm_t = torch.zeros(b, n, d, device=dev, dtype=dtype)
        cm_u = torch.zeros(b, n, d, device=dev, dtype=dtype)
        for r in range(b):
            cm_t[r, : lengths[r]] = cm[r][ps[r]:]
            if lc.cfg > 0:  # the reference's unconditional pass runs cond_mlp on the target slice alone
                cm_u[r, : lengths[r]] = cm[r][ps[r]:] if fast else est.cond_mlp(cond_emb[r][None, ps[r]:] + model.layer_emb.weight[layer])[0]

        def logits_fn(ids, is_masked, t_i, layer=layer, finer=finer, emb=emb, placer=placer, m_c=m_c,
                      cm_t=cm_t, cm_u=cm_u, lc=lc):
            cur = torch.where(is_masked[..., None], mask_token, emb(ids))
            x = cum + cur + finer
            with _autocast(dev, autocast):
                e_c, e_u = _estimate(est, placer.place(x + cm_t), m_c, x + cm_u if lc.cfg > 0 else None, m_u, t_i, fast)
                e = placer.take(e_c)
                if e_u is not None:
                    e = _cfg(e, e_u, lengths, lc.cfg, lc.rescale_cfg, fast)
                return model.to_logits[layer](e).float()

        ids = per_sample_decode(logits_fn, lengths, int(lc.n_timesteps), temp=lc.temp, filter_thres=lc.filter_thres,
                                noises=noises, device=dev, fast=fast)
        codes[:, :, layer] = ids
        cum = cum + emb(ids)
    return [codes[r, :T] for r, T in enumerate(lengths)]
