"""Bidirectional Llama-style masked-generative transformer ("LlamaNAR"), shared by Metis stage 1,
MaskGCT T2S and MaskGCT S2A. Behaviour follows docs/reference.md §1; parameter names are the
published checkpoints' keys (under the `diff_estimator.` prefix of the owning model).

Axes: b batch, t frames (or prefix + frames), d hidden size, h heads, e head dim (= d / h).

    x ─┬─ (+ cond_mlp(cond))            condition variant (S2A)
       └─ [cond_mlp(prefix) ; x]         prefix variant (T2S / Metis TTS)
    for each layer:  x += o_proj(attn(AdaRMS(x, c)));  x += mlp(AdaRMS(x, c))
    out = AdaRMS(x, c),  c = diff_step_mlp(sinusoid(t))  (one vector per sample)

Attention over a padded batch takes one of three paths (`LlamaNAR.forward`):
    no padding                    SDPA without a mask (flash / memory-efficient kernels are eligible)
    padding, packing="off"        SDPA with an additive key mask; padded rows are computed (the reference)
    padding, packing="compute"    the valid tokens of every row laid end to end in one row of N tokens
                                  (`Packed`): block-diagonal attention (flash varlen on CUDA, one SDPA
                                  per utterance elsewhere), adaptive-norm gains per utterance, nothing
                                  computed on padding. RoPE positions stay those of the padded layout, so
                                  every valid output equals the padded computation's (padded phone slots
                                  keep taking positions, docs/reference.md Q19).
    padding, packing="utterance"  the same, with RoPE positions counted inside each utterance's valid
                                  tokens: each utterance gets exactly what it would get alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(b,) raw mask time in [0, 1] -> (b, dim): [sin(t f_k), cos(t f_k)], f_k = 10000^(-k/(dim/2-1)).

    t is deliberately NOT scaled by 1000 (docs/reference.md Q18): the released weights were trained this way.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def two_layer_mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear; keys `.0.*` and `.2.*` as in the published files."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose gain is predicted per sample from the diffusion-time vector c.

    out = to_weight(c)[:, None, :] * x / sqrt(mean(x^2) + eps); no shift, no static weight.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.to_weight = nn.Linear(dim, dim)
        self.eps = eps

    def forward(self, x: torch.Tensor, c: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, t, d), c (b, d) -> (b, t, d); packed: x (1, N, d), rows (N,) the sample of each token.

        torch's fused rms_norm accumulates in fp32 inside the kernel, so bf16 activations need no
        fp32 copy of x (tests/models/test_packing.py bounds the bf16 difference).
        """
        gain = self.to_weight(c)  # (b, d), once per sample
        gain = gain[:, None, :] if rows is None else gain[rows][None]
        return (gain * F.rms_norm(x, (x.shape[-1],), eps=self.eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE, rotate-half convention, base 10000; positions are not capped (max_position unused)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # not in the published state_dict

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (t,) -> cos, sin of shape (t, e)."""
        angles = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        assert dim % n_heads == 0, f"hidden size {dim} is not divisible by {n_heads} heads"
        self.n_heads = n_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn: "torch.Tensor | Packed | None") -> torch.Tensor:
        """x (b, t, d); cos/sin (t, e); attn: None (no padding), a (b, 1, 1, t) additive key bias
        (0 or dtype-min) or boolean key mask (True = attend), or the `Packed` layout of a (1, N, d) x
        -> (b, t, d)."""
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = q * cos + rotate_half(q) * sin  # (b, h, t, e)
        k = k * cos + rotate_half(k) * sin
        if isinstance(attn, Packed):
            y = block_diagonal_attention(q[0], k[0], v[0], attn)[None]
        else:
            # Non-causal: every query sees every valid key; padded query rows are computed, never masked.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class Packed(NamedTuple):
    """The valid tokens of a padded (b, l) batch laid end to end in one row of N tokens.

    index (N,) flat positions b_i * l + j of the valid tokens, row-major; rows (N,) the sample of each
    token; positions (N,) its position inside its own utterance; cu_seqlens (b + 1,) int32 offsets of
    the utterances; lengths the b utterance lengths (host ints); max_len their maximum.
    """

    index: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: tuple[int, ...]
    max_len: int

    @classmethod
    def of(cls, valid: torch.Tensor, utterance_positions: bool = True) -> "Packed":
        """valid (b, l) bool -> the packed layout; the valid tokens of a row keep their order.
        Positions count valid tokens within each row, or (utterance_positions=False) are the
        tokens' indices in the padded row."""
        b, l = valid.shape
        index = valid.reshape(-1).nonzero()[:, 0]
        rows = torch.div(index, l, rounding_mode="floor")
        positions = (valid.long().cumsum(1) - 1).reshape(-1)[index] if utterance_positions else index - rows * l
        lengths = valid.sum(1)
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        host = tuple(int(n) for n in lengths.tolist())
        return cls(index, rows, positions, cu, host, max(host) if host else 0)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(b, l, ...) -> (1, N, ...)."""
        return x.reshape(-1, *x.shape[2:])[self.index][None]

    def unpack(self, y: torch.Tensor, b: int, l: int) -> torch.Tensor:
        """(1, N, ...) -> (b, l, ...), zeros where the batch had padding."""
        out = y.new_zeros(b * l, *y.shape[2:])
        return out.index_copy(0, self.index, y[0]).view(b, l, *y.shape[2:])


def block_diagonal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Attention inside each utterance of a packed row: q, k, v (h, N, e) -> (h, N, e).

    CUDA half precision: flash variable-length attention over `cu_seqlens`, one kernel for the row.
    Otherwise one SDPA per utterance (no mask, no compute across utterances).
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _varlen_attn is not None:
        y = _varlen_attn(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), packed.cu_seqlens, packed.cu_seqlens,
                         packed.max_len, packed.max_len)  # (N, h, e)
        return y.transpose(0, 1)
    return _per_utterance_sdpa(q, k, v, packed.lengths)


@torch.compiler.disable  # a Python loop over utterances: runs eager inside a compiled layer
def _per_utterance_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    outs, start = [], 0
    for n in lengths:
        s = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(q[None, :, s], k[None, :, s], v[None, :, s])[0])
        start += n
    return torch.cat(outs, dim=1)


try:  # torch >= 2.9 on CUDA: flash attention over cumulative sequence offsets
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - older torch: the per-utterance path
    _varlen_attn = None


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, n_heads)
        self.mlp = SwiGLU(dim, 4 * dim)
        self.input_layernorm = AdaptiveRMSNorm(dim)
        self.post_attention_layernorm = AdaptiveRMSNorm(dim)

    def forward(self, x, c, cos, sin, attn):
        rows = attn.rows if isinstance(attn, Packed) else None
        x = x + self.self_attn(self.input_layernorm(x, c, rows), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x, c, rows))


PACKING = ("off", "compute", "utterance")


class LlamaNAR(nn.Module):
    """The `diff_estimator` of T2S / Metis (prefix variant) and S2A (condition variant).

    Args:
        hidden_size: d. num_layers, num_heads: stack size (head dim = d / heads).
        use_cond_mlp: build `cond_mlp` (d -> 4d -> d) for a phone prefix or an added condition.
        vestigial_embed_tokens: keep S2A's zero-size `embed_tokens.weight` [0, 256] key (docs/reference.md Q14) so
            that the released S2A files load strictly; it is never used.
        gradient_checkpointing: recompute each layer in backward (saves activation memory).
        packing: how a batch with padding runs (module docstring): "off" (the reference's padded
            computation), "compute" (packed, no compute on padding, the same outputs as "off") or
            "utterance" (packed, each utterance as if alone: its frames follow its own valid phones).
    """

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, use_cond_mlp: bool = False,
                 vestigial_embed_tokens: bool = False, gradient_checkpointing: bool = False, packing: str = "off"):
        super().__init__()
        d = hidden_size
        self.layers = nn.ModuleList(DecoderLayer(d, num_heads) for _ in range(num_layers))
        self.norm = AdaptiveRMSNorm(d)
        self.diff_step_mlp = two_layer_mlp(d, 4 * d, d)
        self.cond_mlp = two_layer_mlp(d, 4 * d, d) if use_cond_mlp else None
        self.embed_tokens = nn.Embedding(0, 256) if vestigial_embed_tokens else None
        self.rotary = RotaryEmbedding(d // num_heads)
        self.hidden_size = d
        self.gradient_checkpointing = gradient_checkpointing
        if packing not in PACKING:
            raise ValueError(f"packing must be one of {PACKING}, got {packing!r} (in YAML write \"off\" quoted: bare off is false)")
        self.packing = packing

    def compile_layers(self, **options) -> None:
        """Regional compilation: each decoder layer compiled in place (one graph reused by every layer,
        dynamic in the sequence length); `options` go to `torch.compile`."""
        options.setdefault("dynamic", True)
        for layer in self.layers:
            layer.compile(**options)

    def forward(self, x: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                prefix_mask: torch.Tensor | None = None, packing: str | None = None) -> torch.Tensor:
        """
        Args:
            x: (b, t, d) summed input embedding. t: (b,) mask time in [0, 1].
            x_mask: (b, t) 1 for valid frames, 0 for padding (None = all valid).
            cond: (b, t, d) frame-aligned condition, added through cond_mlp (S2A).
            prefix: (b, p, d) prefix embedding (phones), passed through cond_mlp and prepended;
                p = 0 behaves exactly like no prefix (the CFG unconditional branch).
            prefix_mask: (b, p) validity of the prefix (padded phone slots still take RoPE positions
                unless packing="utterance", docs/reference.md Q19).
            packing: this call's packing mode instead of `self.packing` (fast decoding packs its CFG batch).
        Returns:
            (b, t, d) hidden states for the x positions only (zeros at padded frames when packed).
        """
        b, n, _ = x.shape
        if x_mask is None:
            x_mask = x.new_ones(b, n)
        if cond is not None:
            x = x + self.cond_mlp(cond)
        p = 0
        if prefix is not None and prefix.shape[1] > 0:
            if self.cond_mlp is None:
                raise ValueError("a prefix was given but this estimator was built without cond_mlp (use_cond_mlp=False)")
            p = prefix.shape[1]
            if prefix_mask is None:
                prefix_mask = x_mask.new_ones(b, p)
            x = torch.cat([self.cond_mlp(prefix), x], dim=1)
            x_mask = torch.cat([prefix_mask.to(x_mask.dtype), x_mask], dim=1)

        c = self.time_condition(t, x.dtype)  # (b, d)
        valid = x_mask != 0
        l = x.shape[1]
        if bool(valid.all()):
            x = self.stack(x, c, torch.arange(l, device=x.device), None)  # nothing to mask: SDPA may pick flash
        elif (packing or self.packing) != "off":
            packed = Packed.of(valid, utterance_positions=(packing or self.packing) == "utterance")
            x = packed.unpack(self.stack(packed.pack(x), c, packed.positions, packed), b, l)  # (1, N, d) inside
        else:
            attn = torch.zeros(x_mask.shape, dtype=x.dtype, device=x.device)
            attn = attn.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]  # (b, 1, 1, t)
            x = self.stack(x, c, torch.arange(l, device=x.device), attn)
        return x[:, p:]

    def time_condition(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t (b,) -> c (b, d) = diff_step_mlp(sinusoid(t)), shared by every adaptive norm."""
        return self.diff_step_mlp(sinusoidal_embedding(t, self.hidden_size).to(dtype))

    def stack(self, x: torch.Tensor, c: torch.Tensor, positions: torch.Tensor,
              attn: "torch.Tensor | Packed | None") -> torch.Tensor:
        """The layers and the final norm: x (b, l, d) (packed: (1, N, d)), c (b, d), positions (l,) RoPE
        positions, attn as `SelfAttention` takes it (None, a key mask/bias, or the `Packed` layout) ->
        (b, l, d). No host synchronisation: fast decoding captures it as a CUDA graph."""
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, c, cos, sin, attn, use_reentrant=False)
            else:
                x = layer(x, c, cos, sin, attn)
        return self.norm(x, c, attn.rows if isinstance(attn, Packed) else None)

    def reset_parameters(self, std: float = 0.02, norm_init: str = "reference") -> None:
        """Fresh init for training from scratch: every Linear N(0, std) with zero bias.

        norm_init="reference" keeps what the released code ends up with (docs/reference.md Q1): the adaptive-norm gains
        are N(0, std) too, so every norm starts near 0 and early training is slow. "unit" is what the
        reference intended (gain weight 0, bias 1: every norm starts as a plain RMSNorm); it only
        changes from-scratch training, never a loaded checkpoint.
        """
        if norm_init not in ("reference", "unit"):
            raise ValueError(f"norm_init must be 'reference' or 'unit', got {norm_init!r}")
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if norm_init == "unit":
            self.unit_norm_gains()

    def unit_norm_gains(self) -> None:
        """Make every adaptive norm start as a plain RMSNorm (gain 1 for any time embedding)."""
        for m in self.modules():
            if isinstance(m, AdaptiveRMSNorm):
                nn.init.zeros_(m.to_weight.weight)
                nn.init.ones_(m.to_weight.bias)


def estimator_of(net: nn.Module) -> LlamaNAR:
    """The LlamaNAR inside a MetisStage1 / MaskGCTS2A (plain or wrapped by peft)."""
    found = next((m for m in net.modules() if isinstance(m, LlamaNAR)), None)
    if found is None:
        raise ValueError(f"{type(net).__name__} holds no LlamaNAR estimator")
    return found
