"""MaskGCT semantic-to-acoustic model (S2A): semantic tokens -> Nq layers of acoustic codec tokens.

Behaviour follows docs/reference.md §3 (and docs/reference.md §2.4 for the per-layer decoding loop); parameter names are
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

from metis.models.decoding import (DecodeConfig, Fast, Packer, UniformNoise, autocast, cfg_combine, guided_passes,
                                   masked_decode, pad_rows, segment, valid_mask)
from metis.models.llama_nar import LlamaNAR
from metis.models.metis_stage1 import per_utterance_prompt_len

MASK_LAYER_SCHEDULES = ("linear", "uniform", "cosine")


class S2AOutput(NamedTuple):
    """What `MaskGCTS2A.forward` returns; the loss is CE of `logits` vs x0[..., mask_layer] where final_mask = 1."""

    logits: torch.Tensor  # (b, t, v) for layer mask_layer
    mask_layer: torch.Tensor  # (1,) long, the layer L predicted in this batch; (b,) one per utterance (packing="utterance")
    final_mask: torch.Tensor  # (b, t, 1) masked and not padding
    x0: torch.Tensor  # (b, t, q) the clean codes
    prompt_len: torch.Tensor  # (b,) long
    mask_prob: torch.Tensor  # (b,) mask ratio sin(pi t / 2)
    t: torch.Tensor  # (b,) mask time


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
        norm_init: from-scratch init of the adaptive-norm gains: "reference" (≈0, docs/reference.md Q1) or "unit" (the
            intended 1; trains faster from scratch). Irrelevant when loading a checkpoint.
        packing: "off" (the reference's padded computation), "compute" (packed estimator, no compute
            on padding, the same maths) or "utterance" (packed, and each utterance trained as if alone:
            trained layer, prompt dropout and prompt length drawn per utterance from its own length,
            heads on valid frames only). "off" and "compute" keep the reference's one layer and one
            dropout draw per batch, prompt bounds from the padded length (docs/reference.md Q4).
    """

    def __init__(self, num_quantizer: int = 12, hidden_size: int = 1024, num_layers: int = 16, num_heads: int = 16,
                 codebook_size: int = 1024, cfg_scale: float = 0.15, mask_layer_schedule: str = "linear",
                 cond_codebook_size: int = 8192, cond_dim: int = 1024, predict_layer_1: bool = True,
                 prompt_max_ratio: float = 0.5, gradient_checkpointing: bool = False, norm_init: str = "reference",
                 packing: str = "off"):
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
        # Condition variant of the estimator; keeps the zero-size `embed_tokens.weight` key (docs/reference.md Q14).
        self.diff_estimator = LlamaNAR(d, num_layers, num_heads, use_cond_mlp=True, vestigial_embed_tokens=True,
                                       gradient_checkpointing=gradient_checkpointing, packing=packing)
        self.norm_init = norm_init
        self.reset_parameters()

    @property
    def packing(self) -> str:
        return self.diff_estimator.packing

    def reset_parameters(self, std: float = 0.02) -> None:
        """Fresh init as the reference ends up with: embeddings and Linears N(0, std), biases 0 (docs/reference.md Q1, Q3);
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
    # training-time corruption (docs/reference.md §3.3)

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

    def sample_mask_layer(self, n: int = 1) -> torch.Tensor:
        """(n,) long layer indices (n = 1: one for the batch, as the reference draws it from torch's global RNG)."""
        if self.mask_layer_schedule == "uniform":
            return torch.randint(0 if self.predict_layer_1 else 1, self.num_quantizer, (n,))
        return torch.multinomial(self.layer_weights(), n, replacement=n > 1)

    def embed_input(self, x0: torch.Tensor, mask: torch.Tensor, mask_layer: int | torch.Tensor,
                    prompt_len: torch.Tensor) -> torch.Tensor:
        """Summed multi-layer input embedding for training layer L (docs/reference.md §3.2).

        Args:
            x0: (b, t, q) long codes. mask: (b, t, 1) 1 where layer L is masked.
            mask_layer: L, an int or a (1,) tensor, or (b,) one layer per row (packing="utterance").
            prompt_len: (b,) frames [0, prompt_len) are prompt.
        Returns:
            xt (b, t, d).
        """
        b, n, _ = x0.shape
        if torch.is_tensor(mask_layer) and mask_layer.numel() > 1:
            return self._embed_input_per_row(x0, mask, mask_layer, prompt_len)
        layer = int(mask_layer)
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

    def _embed_input_per_row(self, x0, mask, layers, prompt_len) -> torch.Tensor:
        """`embed_input` with layer L_r for row r (layers (b,)); each row's sum is the same as alone."""
        b, n, _ = x0.shape
        dtype = self.mask_emb.weight.dtype
        is_prompt = (torch.arange(n, device=x0.device)[None, :] < prompt_len.to(x0.device)[:, None])[..., None].to(dtype)
        mask = mask.to(dtype)
        mask_token = self.mask_emb.weight[0]
        lay = layers.to(x0.device)[:, None, None]  # (b, 1, 1)
        xt = torch.zeros(b, n, self.hidden_size, dtype=dtype, device=x0.device)
        for q, emb in enumerate(self.token_emb):
            e = emb(x0[:, :, q])
            at = mask * mask_token + (1 - mask) * e
            above = is_prompt * e + (1 - is_prompt) * mask_token
            xt = xt + torch.where(lay > q, e, torch.where(lay == q, at, above))
        return xt

    def forward_diffusion(self, x0: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None = None):
        """Corrupt one layer of x0 at mask time t.

        RNG order (matches the reference's global-RNG draws): layer (multinomial / randint), one
        batch scalar rand(1) for prompt dropout, randint prompt lengths (only if kept), Bernoulli mask.

        With packing="utterance" (x_mask given): per utterance, layer (b,), dropout rand (b,), prompt length from
        the utterance's own length, then the Bernoulli mask; padding is never masked.

        Args:
            x0: (b, t, q) long codes. t: (b,) mask time in (0, 1]. x_mask: (b, t) validity (packing="utterance" only).
        Returns:
            xt (b, t, d), t (b,), mask_layer (1,) or (b,), mask (b, t, 1), prompt_len (b,), mask_prob (b,).
        """
        b, n, nq = x0.shape
        if nq != self.num_quantizer:
            raise ValueError(f"x0 has {nq} codec layers, model has num_quantizer={self.num_quantizer}")
        if self.packing == "utterance" and x_mask is not None:
            mask_layer = self.sample_mask_layer(b).to(x0.device)
            mask_prob = torch.sin(t * math.pi / 2)
            prompt_len = per_utterance_prompt_len(x_mask.sum(1).long(), self.cfg_scale, self.prompt_max_ratio)
            mask = torch.bernoulli(torch.ones(b, n, device=x0.device) * mask_prob[:, None].float())
            mask = mask.masked_fill(torch.arange(n, device=x0.device)[None, :] < prompt_len[:, None], 0) * x_mask
            empty = mask.sum(dim=1) == 0
            mask[empty, prompt_len[empty]] = 1
            mask = mask[..., None]
            return self.embed_input(x0, mask, mask_layer, prompt_len), t, mask_layer, mask, prompt_len, mask_prob
        hi = int(n * self.prompt_max_ratio)  # n // 2 at the reference's 0.5; bounds use the padded length (docs/reference.md Q4)
        lo = min(n // 4, 5)  # min, not max, as in the reference (docs/reference.md Q4)
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
        # At least one masked frame per row: the first after the prompt (may be padding, docs/reference.md Q5).
        empty = mask.sum(dim=1) == 0
        mask[empty, prompt_len[empty]] = 1
        mask = mask[..., None]  # (b, t, 1)

        xt = self.embed_input(x0, mask, mask_layer, prompt_len)
        return xt, t, mask_layer, mask, prompt_len, mask_prob

    def layer_logits(self, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, layer: int | torch.Tensor,
                     x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Estimator + head for layer L: xt (b, t, d), t (b,), cond (b, t, d) -> logits (b, t, v).

        layer: an int, or (b,) one layer per row (packing="utterance": each row gets its layer embedding and head,
        heads run on valid frames only, padded frames get zero logits)."""
        if not torch.is_tensor(layer) or layer.numel() == 1:
            cond = cond + self.layer_emb.weight[int(layer)]  # same layer vector on every frame
            return self.to_logits[int(layer)](self.diff_estimator(xt, t, x_mask, cond=cond))
        h = self.diff_estimator(xt, t, x_mask, cond=cond + self.layer_emb(layer)[:, None, :])
        valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if x_mask is None else x_mask != 0
        logits = h.new_zeros(*h.shape[:2], self.codebook_size)
        for q in layer.unique().tolist():
            sel = valid & (layer == q)[:, None]
            logits[sel] = self.to_logits[q](h[sel])
        return logits

    def forward(self, x0: torch.Tensor, x_mask: torch.Tensor, cond_code: torch.Tensor) -> S2AOutput:
        """Training step: x0 (b, t, q) codes, x_mask (b, t) 1 = valid, cond_code (b, t) semantic ids."""
        if x0.dim() != 3:
            raise ValueError(f"x0 must be (b, t, q) codes, got shape {tuple(x0.shape)}")
        if cond_code.shape != x0.shape[:2] or x_mask.shape != x0.shape[:2]:
            raise ValueError(f"cond_code {tuple(cond_code.shape)} and x_mask {tuple(x_mask.shape)} must be (b, t) = {tuple(x0.shape[:2])}")
        cond = self.cond_emb(cond_code)  # (b, t, d)
        t = torch.rand(x0.shape[0], device=x0.device).clamp(1e-5, 1.0)
        xt, t, mask_layer, mask, prompt_len, mask_prob = self.forward_diffusion(x0, t, x_mask)
        logits = self.layer_logits(xt, t, cond, mask_layer if mask_layer.numel() > 1 else int(mask_layer), x_mask)
        final_mask = mask * x_mask[..., None].to(mask.dtype)
        return S2AOutput(logits, mask_layer, final_mask, x0, prompt_len, mask_prob, t)

    # ----------------------------------------------------------------------------------------------
    # inference (docs/reference.md §3.4)

    @torch.no_grad()
    def reverse_diffusion(self, cond: torch.Tensor, prompt: torch.Tensor, temp: float = 1.5, filter_thres: float = 0.98,
                          n_timesteps: Sequence[int] = (40, 16) + (1,) * 10, cfg: float = 2.5, rescale_cfg: float = 0.75,
                          gt_code: torch.Tensor | None = None, noise: UniformNoise | None = None) -> torch.Tensor:
        """Generate acoustic codes layer by layer, rows coupled as in the reference (docs/reference.md §3.4, Q6).

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
        if gt_code is not None and (gt_code.shape[:2] != (b, n) or gt_code.shape[-1] > nq):
            raise ValueError(f"gt_code must be (b={b}, t={n}, g<={nq}), got {tuple(gt_code.shape)}")
        if len(n_timesteps) < nq:
            raise ValueError(f"n_timesteps has {len(n_timesteps)} entries, need one per layer ({nq})")
        layers = [DecodeConfig(int(s), temp, filter_thres, cfg, rescale_cfg) for s in n_timesteps[:nq]]
        return self._reverse_diffusion(cond, prompt, [p] * b, [n] * b, layers, gt_code, noise=noise, coupled=True)

    @torch.no_grad()
    def reverse_diffusion_rows(self, conds: Sequence[torch.Tensor], prompts: Sequence[torch.Tensor],
                               layer_settings: Sequence[DecodeConfig], *, noises: Sequence[UniformNoise],
                               gt_codes: Sequence[torch.Tensor] | None = None, fast: Fast = False) -> list[torch.Tensor]:
        """Decode a batch of rows of their own lengths, each as if alone (docs/reference.md Q6 not reproduced).

        Args:
            conds: per row the semantic ids (p_r + T_r,) of prompt + target.
            prompts: per row the acoustic prompt codes (p_r, >= Nq) (p_r may be 0); the first Nq layers are
                used (the 1-layer model gets the 12-layer prompt, as in the reference).
            layer_settings: one DecodeConfig per layer (entries of given gt layers are unused).
            noises: one uniform source per row. gt_codes: per row (T_r, g) given first layers.
            fast: batched CFG, top-k-only sampling, bf16 on CUDA; a `FastDecoding` picks precision and
                shape buckets (metis.models.decoding).
        Returns:
            per row codes (T_r, Nq). A batch of one equals `reverse_diffusion` with the same noise.
        """
        nq, b = self.num_quantizer, len(conds)
        dev = self.cond_emb.weight.device
        if len(layer_settings) < nq:
            raise ValueError(f"need one DecodeConfig per S2A layer ({nq}), got {len(layer_settings)}")
        if len(prompts) != b or len(noises) != b or (gt_codes is not None and len(gt_codes) != b):
            raise ValueError(f"conds, prompts, noises (and gt_codes) need one entry per row ({b})")
        ps = [int(p.shape[0]) for p in prompts]
        lengths = [int(c.shape[0]) - p for c, p in zip(conds, ps)]
        for r, T in enumerate(lengths):
            if T <= 0:
                raise ValueError(f"row {r}: {conds[r].shape[0]} semantic frames, not more than the {ps[r]} acoustic prompt frames")
            if prompts[r].dim() != 2 or prompts[r].shape[1] < nq:
                raise ValueError(f"row {r}: acoustic prompt must be (p, >= {nq}) codes, got {tuple(prompts[r].shape)}")
        cond = self.cond_emb(pad_rows(conds, dev, torch.long))  # (b, p + t, d)
        prompt = (pad_rows([p[:, :nq] for p in prompts], dev, torch.long) if max(ps)
                  else torch.zeros(b, 0, nq, dtype=torch.long, device=dev))
        gt = None if gt_codes is None else pad_rows(gt_codes, dev, torch.long)
        codes = self._reverse_diffusion(cond, prompt, ps, lengths, list(layer_settings[:nq]), gt, noise=list(noises),
                                        coupled=False, fast=fast)
        return [codes[r, :T] for r, T in enumerate(lengths)]

    def _reverse_diffusion(self, cond: torch.Tensor, prompt: torch.Tensor, prompt_lens: list[int], target_lens: list[int],
                           layer_settings: list[DecodeConfig], gt_code: torch.Tensor | None, *, noise, coupled: bool,
                           fast: Fast = False) -> torch.Tensor:
        """The inference forward on padded rows: cond (b, p_max + T_max, d), prompt (b, p_max, q), row r
        valid for its own lengths -> codes (b, T_max, q).

        Per layer L: conditional pass [prompt_emb ; cum + cur_L + (Nq-1-L)·mask] + cond_mlp(cond + layer_emb[L]);
        unconditional pass (cfg > 0): the target part alone with cond_mlp of the target's condition.
        cond_mlp depends on no step, so it runs once per layer (fast: the unconditional one is the
        target slice of the conditional one instead of its own pass).
        """
        nq, d = self.num_quantizer, self.hidden_size
        device = cond.device
        b, n = len(target_lens), max(target_lens)
        g = 0 if gt_code is None else gt_code.shape[-1]
        mask_token = self.mask_emb.weight[0]  # (d,)
        prompt_emb = sum(self.token_emb[q](prompt[:, :, q]) for q in range(nq))  # (b, p, d)
        codes = torch.zeros(b, n, nq, dtype=torch.long, device=device)
        cum = torch.zeros(b, n, d, dtype=cond.dtype, device=device)  # decided layers, summed
        for q in range(g):
            codes[:, :, q] = gt_code[:, :, q]
            cum = cum + self.token_emb[q](gt_code[:, :, q])
        packer = Packer([prompt_emb], [prompt_lens], target_lens)
        m_u = valid_mask(target_lens, n, device).float()
        rows = None if coupled else target_lens
        cond_mlp = self.diff_estimator.cond_mlp

        for layer in range(g, nq):
            lc = layer_settings[layer]
            layer_cond = cond + self.layer_emb.weight[layer]  # (b, p + t, d)
            cm_c = cond_mlp(layer_cond)[:, : packer.l]
            cm_u = None
            if lc.cfg > 0:
                cm_u = segment(cm_c, prompt_lens, target_lens) if fast else cond_mlp(segment(layer_cond, prompt_lens, target_lens))
            finer = (nq - 1 - layer) * mask_token  # layers above L are all [MASK]
            emb = self.token_emb[layer]

            def logits_fn(ids, is_masked, t_i, layer=layer, lc=lc, cm_c=cm_c, cm_u=cm_u, finer=finer, emb=emb):
                cur = torch.where(is_masked[..., None], mask_token, emb(ids))  # (b, t, d)
                x = cum + cur + finer
                with autocast(device, fast):
                    e_c, e_u = guided_passes(self.diff_estimator, packer.place(x) + cm_c, packer.mask,
                                             None if cm_u is None else x + cm_u, m_u, t_i, fast)
                    e = packer.take(e_c)
                    if e_u is not None:
                        e = cfg_combine(e, e_u, lc.cfg, lc.rescale_cfg, rows, fast)
                    return self.to_logits[layer](e)

            ids = masked_decode(logits_fn, target_lens, lc.n_timesteps, temp=lc.temp, filter_thres=lc.filter_thres,
                                noise=noise, device=device, coupled=coupled, fast=fast)
            codes[:, :, layer] = ids
            cum = cum + emb(ids)
        return codes
