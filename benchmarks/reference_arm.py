"""The reference implementation's training computation for Metis stage 1 (base: no phones, no adapter),
re-written from docs/reference.md §1-§2 so `bench_speed.py` can time it beside metis on the same weights.

This is not the project's model (that is metis/models/metis_stage1.py). It does what the published
code does, operation for operation, so that its time is the reference's time:
- eager attention: scores = q kᵀ / sqrt(e) + M with M an additive (b, 1, l, l) key mask built even
  when nothing is padded, softmax in float32, then · v (docs/reference.md Q20: no attention
  implementation is set, so the layers run eager);
- RoPE cos/sin recomputed inside every layer from the position ids (docs/reference.md Q20);
- adaptive RMSNorm with the mean of squares taken on a float32 copy of x, then cast back (docs/reference.md §1);
- the corruption of docs/reference.md §2.3 with the same random draws in the same order as MetisStage1.forward.

The state_dict keys are the published ones, so `load_state_dict(metis_model.state_dict())` gives both
the same weights; tests/test_reference_arm.py checks this arm against the reference's own golden
fixture, which is what makes it a faithful copy and not a strawman.

Axes: b batch, l frames, d hidden, h heads, e head dim, v vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RefAdaRMS(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.to_weight = nn.Linear(d, d)
        self.eps = eps

    def forward(self, x, c):
        dtype = x.dtype
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return (self.to_weight(c)[:, None, :] * x).to(dtype)


class RefRotary(nn.Module):
    def __init__(self, e: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, e, 2, dtype=torch.float32) / e), persistent=False)

    def forward(self, x, position_ids):
        """position_ids (b, l) -> cos, sin (b, l, e), in float32 then x's dtype."""
        freqs = (self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1) @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rot(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RefAttention(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.rotary_emb = RefRotary(d // h)

    def forward(self, x, mask4d, position_ids):
        b, l, d = x.shape
        q, k, v = (p(x).view(b, l, self.h, d // self.h).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = self.rotary_emb(v, position_ids)  # per layer, as the reference's layers do
        cos, sin = cos[:, None], sin[:, None]
        q, k = q * cos + _rot(q) * sin, k * cos + _rot(k) * sin
        w = q @ k.transpose(2, 3) / math.sqrt(d // self.h) + mask4d
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.o_proj((w @ v).transpose(1, 2).reshape(b, l, d))


class RefMLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(d, 4 * d, bias=False)
        self.down_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class RefLayer(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.self_attn, self.mlp = RefAttention(d, h), RefMLP(d)
        self.input_layernorm, self.post_attention_layernorm = RefAdaRMS(d), RefAdaRMS(d)

    def forward(self, x, c, mask4d, position_ids):
        x = x + self.self_attn(self.input_layernorm(x, c), mask4d, position_ids)
        return x + self.mlp(self.post_attention_layernorm(x, c))


class RefEstimator(nn.Module):
    def __init__(self, d: int, n_layers: int, h: int):
        super().__init__()
        self.layers = nn.ModuleList(RefLayer(d, h) for _ in range(n_layers))
        self.norm = RefAdaRMS(d)
        self.diff_step_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.d = d

    def forward(self, x, t, x_mask):
        b, l, _ = x.shape
        half = self.d // 2
        f = torch.exp(torch.arange(half, dtype=torch.float32, device=x.device) * -(math.log(10000) / (half - 1)))
        c = self.diff_step_mlp(torch.cat([(t[:, None] * f).sin(), (t[:, None] * f).cos()], dim=-1))
        # (b, 1, l, l): 0 for a valid key, float32-min for a padded one; built whatever the padding
        mask4d = (1.0 - x_mask[:, None, None, :].to(x.dtype)).expand(b, 1, l, l) * torch.finfo(x.dtype).min
        position_ids = torch.arange(l, device=x.device)[None].expand(b, -1)
        for layer in self.layers:
            x = layer(x, c, mask4d, position_ids)
        return self.norm(x, c)


class ReferenceStage1(nn.Module):
    """The reference's stage 1 (no phones, no adapter): forward(x0, x_mask) -> (logits, final_mask)."""

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, cond_codebook_size: int,
                 cfg_scale: float = 0.15, mask_prob_floor: float = 0.2, prompt_max_ratio: float = 0.4):
        super().__init__()
        d = hidden_size
        self.mask_emb, self.cond_emb = nn.Embedding(1, d), nn.Embedding(cond_codebook_size, d)
        self.to_logit = nn.Linear(d, cond_codebook_size)
        self.diff_estimator = RefEstimator(d, num_layers, num_heads)
        self.cfg_scale, self.mask_prob_floor, self.prompt_max_ratio = cfg_scale, mask_prob_floor, prompt_max_ratio

    def embed(self, x0, mask):
        """x0 (b, l), mask (b, l, 1) float -> xt (b, l, d)."""
        return mask * self.mask_emb(torch.zeros_like(x0)) + (1 - mask) * self.cond_emb(x0)

    def forward(self, x0, x_mask):
        b, n = x0.shape
        t = torch.rand(b).clamp(1e-5, 1.0)
        mask_prob = torch.sin(t * math.pi / 2).clamp(min=self.mask_prob_floor)
        if torch.rand(1) > self.cfg_scale:
            prompt_len = torch.randint(min(n // 4, 5), int(n * self.prompt_max_ratio), (b,))
        else:
            prompt_len = torch.zeros(b, dtype=torch.long)
        mask = torch.bernoulli(torch.ones(b, n) * mask_prob[:, None])
        mask = mask.masked_fill(torch.arange(n)[None, :] < prompt_len[:, None], 0)
        empty = (mask.sum(dim=1) == 0).nonzero()[:, 0]
        mask[empty, prompt_len[empty]] = 1
        mask = mask[..., None]
        logits = self.to_logit(self.diff_estimator(self.embed(x0, mask), t, x_mask))
        return logits, mask * x_mask[..., None]
