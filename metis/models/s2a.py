"""MaskGCT semantic-to-acoustic model (S2A): semantic tokens -> Nq layers of acoustic codec tokens.

Behaviour follows ARCHITECTURE.md §3 (and §2.4 for the per-layer decoding loop); parameter names are
the published `s2a_1layer` / `s2a_full` keys, so released files load without a converter.

Axes: b batch, t frames, p prompt frames, q codec layer (quantizer), v codebook, d hidden size.

    input  xt = sum_q  { q < L: token_emb_q(code_q)
                         q = L: mask ? mask_emb : token_emb_L(code_L)
                         q > L: prompt ? token_emb_q(code_q) : mask_emb }
    cond   = cond_emb(semantic ids) + layer_emb[L]          (added through diff_estimator.cond_mlp)
    logits = to_logits[L](diff_estimator(xt, t, cond))

Training predicts one layer L per batch; inference decodes layer by layer (coarse to fine).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from metis.models.decoding import UniformNoise, cfg_combine, iterative_decode
from metis.models.llama_nar import LlamaNAR

MASK_LAYER_SCHEDULES = ("linear", "uniform", "cosine")


class S2AOutput(NamedTuple):
    """What `MaskGCTS2A.forward` returns; the loss is CE of `logits` vs x0[..., mask_layer] where final_mask = 1."""

    logits: torch.Tensor  # (b, t, v) for layer mask_layer
    mask_layer: torch.Tensor  # (1,) long, the layer L predicted in this batch
    final_mask: torch.Tensor  # (b, t, 1) masked and not padding
    x0: torch.Tensor  # (b, t, q) the clean codes
    prompt_len: torch.Tensor  # (b,) long
    mask_prob: torch.Tensor  # (b,) mask ratio sin(pi t / 2)


class MaskGCTS2A(nn.Module):
    """Semantic-to-acoustic masked generative model.

    Args:
        num_quantizer: Nq codec layers modelled (1 for `s2a_1layer`, 12 for `s2a_full`).
        hidden_size, num_layers, num_heads: size of the LlamaNAR estimator.
        codebook_size: v, codes per acoustic layer.
        cfg_scale: probability that a training batch drops its prompt (unconditional for CFG).
        mask_layer_schedule: how the trained layer is drawn: "linear" (released), "uniform", "cosine".
        cond_codebook_size: semantic vocabulary (8192).
        cond_dim: kept for config compatibility; the condition is `cond_emb` of width hidden_size.
        predict_layer_1: if False, layer 0 is never trained (s2a_full, whose layer 0 comes from s2a_1layer).
        prompt_max_ratio: training prompt lengths are drawn below int(prompt_max_ratio * t) (reference: t // 2).
        gradient_checkpointing: recompute estimator layers in backward.
        norm_init: from-scratch init of the adaptive-norm gains: "reference" (≈0, Q1) or "unit" (the
            intended 1; trains faster from scratch). Irrelevant when loading a checkpoint.
    """

    def __init__(self, num_quantizer: int = 12, hidden_size: int = 1024, num_layers: int = 16, num_heads: int = 16,
                 codebook_size: int = 1024, cfg_scale: float = 0.15, mask_layer_schedule: str = "linear",
                 cond_codebook_size: int = 8192, cond_dim: int = 1024, predict_layer_1: bool = True,
                 prompt_max_ratio: float = 0.5, gradient_checkpointing: bool = False, norm_init: str = "reference"):
        super().__init__()
        if mask_layer_schedule not in MASK_LAYER_SCHEDULES:
            raise ValueError(f"mask_layer_schedule={mask_layer_schedule!r}; expected one of {MASK_LAYER_SCHEDULES}")
        if num_quantizer < 1 or (num_quantizer == 1 and not predict_layer_1):
            raise ValueError(f"num_quantizer={num_quantizer} with predict_layer_1={predict_layer_1} leaves no layer to train")
        self.num_quantizer = num_quantizer
        self.hidden_size = hidden_size
        self.codebook_size = codebook_size
        self.cfg_scale = cfg_scale
        self.mask_layer_schedule = mask_layer_schedule
        self.cond_codebook_size = cond_codebook_size
        self.cond_dim = cond_dim
        self.predict_layer_1 = predict_layer_1
        self.prompt_max_ratio = prompt_max_ratio

        d = hidden_size
        self.layer_emb = nn.Embedding(num_quantizer, d)
        self.mask_emb = nn.Embedding(1, d)
        self.token_emb = nn.ModuleList(nn.Embedding(codebook_size, d) for _ in range(num_quantizer))
        self.to_logits = nn.ModuleList(nn.Linear(d, codebook_size) for _ in range(num_quantizer))
        self.cond_emb = nn.Embedding(cond_codebook_size, d)
        # Condition variant of the estimator; keeps the zero-size `embed_tokens.weight` key (Q14).
        self.diff_estimator = LlamaNAR(d, num_layers, num_heads, use_cond_mlp=True, vestigial_embed_tokens=True,
                                       gradient_checkpointing=gradient_checkpointing)
        self.norm_init = norm_init
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Fresh init as the reference ends up with: embeddings and Linears N(0, std), biases 0 (Q1, Q3);
        the adaptive-norm gains per `norm_init`."""
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.norm_init == "unit":
            self.diff_estimator.unit_norm_gains()
        elif self.norm_init != "reference":
            raise ValueError(f"norm_init must be 'reference' or 'unit', got {self.norm_init!r}")

    # ----------------------------------------------------------------------------------------------
    # training-time corruption (§3.3)

    def layer_weights(self) -> torch.Tensor:
        """(q,) float probabilities of training each layer under `mask_layer_schedule`.

        linear: ∝ (Nq - q); with predict_layer_1=False the weights are [0, Nq, Nq-1, ..., 2]
        (the whole list shifts right by one, layer 0 gets 0).
        """
        nq = self.num_quantizer
        if self.mask_layer_schedule == "linear":
            w = [float(nq - q) for q in range(nq)] if self.predict_layer_1 else [0.0] + [float(nq - (q - 1)) for q in range(1, nq)]
        elif self.mask_layer_schedule == "cosine":
            w = ([math.cos(q / nq * math.pi / 2) for q in range(nq)] if self.predict_layer_1
                 else [0.0] + [math.cos((q - 1) / nq * math.pi / 2) for q in range(1, nq)])
        else:  # uniform
            w = [1.0] * nq if self.predict_layer_1 else [0.0] + [1.0] * (nq - 1)
        w = torch.tensor(w, dtype=torch.float32)
        return w / w.sum()

    def sample_mask_layer(self) -> torch.Tensor:
        """(1,) long layer index for this batch, drawn from torch's global RNG as the reference does."""
        if self.mask_layer_schedule == "uniform":
            return torch.randint(0 if self.predict_layer_1 else 1, self.num_quantizer, (1,))
        return torch.multinomial(self.layer_weights(), 1)

    def embed_input(self, x0: torch.Tensor, mask: torch.Tensor, mask_layer: int | torch.Tensor,
                    prompt_len: torch.Tensor) -> torch.Tensor:
        """Summed multi-layer input embedding for training layer L (§3.2).

        Args:
            x0: (b, t, q) long codes. mask: (b, t, 1) 1 where layer L is masked.
            mask_layer: L, an int or a (1,) tensor. prompt_len: (b,) frames [0, prompt_len) are prompt.
        Returns:
            xt (b, t, d).
        """
        layer = int(mask_layer)
        b, n, _ = x0.shape
        is_prompt = (torch.arange(n, device=x0.device)[None, :] < prompt_len.to(x0.device)[:, None])[..., None]  # (b, t, 1)
        is_prompt = is_prompt.to(self.mask_emb.weight.dtype)
        mask = mask.to(self.mask_emb.weight.dtype)
        mask_token = self.mask_emb.weight[0]  # (d,)
        xt = torch.zeros(b, n, self.hidden_size, dtype=mask_token.dtype, device=x0.device)
        for q, emb in enumerate(self.token_emb):
            e = emb(x0[:, :, q])  # (b, t, d)
            if q < layer:
                xt = xt + e
            elif q == layer:
                xt = xt + mask * mask_token + (1 - mask) * e
            else:  # finer layers are unknown outside the prompt
                xt = xt + is_prompt * e + (1 - is_prompt) * mask_token
        return xt

    def forward_diffusion(self, x0: torch.Tensor, t: torch.Tensor):
        """Corrupt one layer of x0 at mask time t.

        RNG order (matches the reference's global-RNG draws): layer (multinomial / randint), one
        batch scalar rand(1) for prompt dropout, randint prompt lengths (only if kept), Bernoulli mask.

        Args:
            x0: (b, t, q) long codes. t: (b,) mask time in (0, 1].
        Returns:
            xt (b, t, d), t (b,), mask_layer (1,), mask (b, t, 1), prompt_len (b,), mask_prob (b,).
        """
        b, n, nq = x0.shape
        if nq != self.num_quantizer:
            raise ValueError(f"x0 has {nq} codec layers, model has num_quantizer={self.num_quantizer}")
        hi = int(n * self.prompt_max_ratio)  # n // 2 at the reference's 0.5; bounds use the padded length (Q4)
        lo = min(n // 4, 5)  # min, not max, as in the reference (Q4)
        if hi <= lo:
            raise ValueError(f"x0 has {n} frames: too short for a prompt length drawn from [{lo}, {hi})")

        mask_layer = self.sample_mask_layer().to(x0.device)  # (1,)
        mask_prob = torch.sin(t * math.pi / 2)  # no 0.2 floor, unlike T2S
        if torch.rand(1) > self.cfg_scale:
            prompt_len = torch.randint(lo, hi, (b,)).to(x0.device)
        else:
            prompt_len = torch.zeros(b, dtype=torch.long, device=x0.device)  # unconditional batch

        mask = torch.bernoulli(torch.ones(b, n, device=x0.device) * mask_prob[:, None].float())  # (b, t)
        is_prompt = torch.arange(n, device=x0.device)[None, :] < prompt_len[:, None]
        mask[is_prompt] = 0
        # At least one masked frame per row: the first after the prompt (may be padding, Q5).
        empty = mask.sum(dim=1) == 0
        mask[empty, prompt_len[empty]] = 1
        mask = mask[..., None]  # (b, t, 1)

        xt = self.embed_input(x0, mask, mask_layer, prompt_len)
        return xt, t, mask_layer, mask, prompt_len, mask_prob

    def layer_logits(self, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, layer: int,
                     x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Estimator + head for layer L: xt (b, t, d), t (b,), cond (b, t, d) -> logits (b, t, v)."""
        cond = cond + self.layer_emb.weight[layer]  # same layer vector on every frame
        return self.to_logits[layer](self.diff_estimator(xt, t, x_mask, cond=cond))

    def forward(self, x0: torch.Tensor, x_mask: torch.Tensor, cond_code: torch.Tensor) -> S2AOutput:
        """Training step: x0 (b, t, q) codes, x_mask (b, t) 1 = valid, cond_code (b, t) semantic ids."""
        if x0.dim() != 3:
            raise ValueError(f"x0 must be (b, t, q) codes, got shape {tuple(x0.shape)}")
        if cond_code.shape != x0.shape[:2] or x_mask.shape != x0.shape[:2]:
            raise ValueError(f"cond_code {tuple(cond_code.shape)} and x_mask {tuple(x_mask.shape)} must be (b, t) = {tuple(x0.shape[:2])}")
        cond = self.cond_emb(cond_code)  # (b, t, d)
        t = torch.rand(x0.shape[0], device=x0.device).clamp(1e-5, 1.0)
        xt, t, mask_layer, mask, prompt_len, mask_prob = self.forward_diffusion(x0, t)
        logits = self.layer_logits(xt, t, cond, int(mask_layer), x_mask)
        final_mask = mask * x_mask[..., None].to(mask.dtype)
        return S2AOutput(logits, mask_layer, final_mask, x0, prompt_len, mask_prob)

    # ----------------------------------------------------------------------------------------------
    # inference (§3.4)

    @torch.no_grad()
    def reverse_diffusion(self, cond: torch.Tensor, prompt: torch.Tensor, temp: float = 1.5, filter_thres: float = 0.98,
                          n_timesteps: Sequence[int] = (40, 16) + (1,) * 10, cfg: float = 2.5, rescale_cfg: float = 0.75,
                          gt_code: torch.Tensor | None = None, noise: UniformNoise | None = None) -> torch.Tensor:
        """Generate acoustic codes layer by layer.

        Args:
            cond: (b, p + t, d) = cond_emb(semantic ids of prompt + target).
            prompt: (b, p, q) acoustic prompt codes, all layers; p may be 0.
            n_timesteps: decoding steps per layer (entry L for layer L; extra entries are ignored).
                One step uses the τ = 0.2 Gumbel rule instead of argmax.
            cfg, rescale_cfg: guidance on hidden states; the unconditional pass drops the prompt.
            gt_code: (b, t, g) long, the first g layers given (their n_timesteps entries are unused).
            noise: source of uniform draws (default torch's RNG; `ReplayNoise` to replay recorded draws).
        Returns:
            codes (b, t, q) long for the target frames (gt layers copied from gt_code).
        """
        nq = self.num_quantizer
        if prompt.dim() != 3 or prompt.shape[-1] != nq:
            raise ValueError(f"prompt must be (b, p, {nq}) codes, got shape {tuple(prompt.shape)}")
        b, total, _ = cond.shape
        p = prompt.shape[1]
        n = total - p
        if n <= 0:
            raise ValueError(f"cond has {total} frames, not more than the {p} prompt frames")
        g = 0 if gt_code is None else gt_code.shape[-1]
        if gt_code is not None and (gt_code.shape[:2] != (b, n) or g > nq):
            raise ValueError(f"gt_code must be (b={b}, t={n}, g<={nq}), got {tuple(gt_code.shape)}")
        if len(n_timesteps) < nq:
            raise ValueError(f"n_timesteps has {len(n_timesteps)} entries, need one per layer ({nq})")

        device = cond.device
        mask_token = self.mask_emb.weight[0]  # (d,)
        prompt_emb = sum(self.token_emb[q](prompt[:, :, q]) for q in range(nq))  # (b, p, d)
        codes = torch.zeros(b, n, nq, dtype=torch.long, device=device)
        cum = torch.zeros(b, n, self.hidden_size, dtype=cond.dtype, device=device)  # decided layers, summed
        for q in range(g):
            codes[:, :, q] = gt_code[:, :, q]
            cum = cum + self.token_emb[q](gt_code[:, :, q])

        for layer in range(g, nq):
            layer_cond = cond + self.layer_emb.weight[layer]  # (b, p + t, d)
            finer = (nq - 1 - layer) * mask_token  # layers above L are all [MASK]
            emb = self.token_emb[layer]

            def logits_fn(ids, is_masked, t_i, layer=layer, layer_cond=layer_cond, finer=finer, emb=emb):
                cur = torch.where(is_masked[..., None], mask_token, emb(ids))  # (b, t, d)
                x = cum + cur + finer
                t = torch.full((b,), t_i, dtype=torch.float32, device=device)
                e = self.diff_estimator(torch.cat([prompt_emb, x], dim=1), t, cond=layer_cond)[:, p:]
                if cfg > 0:
                    e_u = self.diff_estimator(x, t, cond=layer_cond[:, p:])
                    e = cfg_combine(e, e_u, cfg, rescale_cfg)
                return self.to_logits[layer](e)

            ids = iterative_decode(logits_fn, b, n, int(n_timesteps[layer]), temp=temp, filter_thres=filter_thres,
                                   device=device, noise=noise)
            codes[:, :, layer] = ids
            cum = cum + emb(ids)
        return codes
