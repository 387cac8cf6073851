"""Metis stage 1 / MaskGCT T2S: masked generative modelling of semantic tokens (docs/reference.md §2).

One class covers the published checkpoints:
- Metis base (no phones, no adapter) = MaskGCT T2S without phone conditioning;
- Metis TTS / MaskGCT T2S (`use_phone_cond=True`: phone ids become a prefix of the estimator input);
- Metis se / tse / vc / omni (zero-gate `SimpleAdapter` adding frame-aligned features to the input);
- Metis l2s (a plain Linear-SiLU-Linear adapter, no gate).
Module names are the published state_dict keys, so released files load with a strict load.

Axes: b batch, t frames (prompt + target), p phones, d hidden size, v semantic vocabulary,
c adapter condition features (w2v-BERT 1024 or visual 768).

    training:  x0 ──corrupt(t)──> xt = m·mask_emb + (1-m)·cond_emb(x0)  [+ adapter(f)]
               logits = to_logit(diff_estimator(xt, t, x_mask, prefix=phone_emb(phones)))
    inference: prompt ids + T masked slots ──masked_decode (CFG on hidden states)──> T ids
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from metis.models.decoding import (DecodeConfig, Fast, Packer, UniformNoise, autocast, cfg_combine, guided_passes,
                                   masked_decode, pad_rows, segment, valid_mask)
from metis.models.llama_nar import LlamaNAR, two_layer_mlp

NO_ADAPTER_FT_TYPES = (None, "tts")  # the released configs' rule: every other ft_type carries cond_adapter


def per_utterance_prompt_len(lengths: torch.Tensor, cfg_scale: float, max_ratio: float) -> torch.Tensor:
    """Prompt lengths drawn per utterance, as a batch of one draws them: with probability cfg_scale no
    prompt (the unconditional case), else U[min(T//4, 5), int(max_ratio · T)) from the utterance's own
    length T. lengths (b,) long -> (b,) long. Draws: rand (b,) for dropout, rand (b,) for the length."""
    device = lengths.device
    keep = torch.rand(lengths.shape[0]).to(device) > cfg_scale
    low = torch.clamp(lengths // 4, max=5)
    high = (lengths.double() * max_ratio).long()
    bad = keep & (high <= low)
    if bool(bad.any()):
        raise ValueError(f"cannot draw a prompt length in [min(T//4, 5), int({max_ratio} T)) for utterances of "
                         f"{lengths[bad].tolist()} frames (too short to hold a prompt)")
    u = torch.rand(lengths.shape[0]).to(device)
    drawn = torch.minimum(low + (u * (high - low)).long(), high - 1)
    return torch.where(keep, drawn, torch.zeros_like(lengths))


class SimpleAdapter(nn.Module):
    """Zero-gated feature adapter: a(f) = gate_scale · out_linear(SiLU(in_linear(f))).

    A fresh adapter outputs 0, so adding it to a pretrained model changes nothing until fine-tuning
    trains it. `zero_init` says which factor starts at 0:
      "gate": gate_scale = 0, the linears at torch's default (the released code). Only the gate gets a
          gradient at first, and that gradient is the loss's correlation with a random projection of f,
          so the gate can stay near 0 for hundreds of steps (docs/finetune.md, "Why the adapter ...").
      "out": gate_scale = 1 and out_linear = 0 (as LoRA's B or ControlNet's zero convolution): out_linear's
          first gradient is the loss's gradient against the hidden features, so the adapter learns at once.
    `gate_scale` is stored with shape [1], as in the published files; the keys are the same either way.
    """

    def __init__(self, in_dim: int, out_dim: int, zero_init: str = "gate"):
        super().__init__()
        if zero_init not in ("gate", "out"):
            raise ValueError(f"adapter zero_init must be 'gate' or 'out', got {zero_init!r}")
        self.zero_init = zero_init
        self.in_linear = nn.Linear(in_dim, 4 * out_dim)
        self.out_linear = nn.Linear(4 * out_dim, out_dim)
        self.gate_scale = nn.Parameter(torch.zeros(1))
        self.zero_start()

    def zero_start(self) -> None:
        """Set the factor `zero_init` names to 0 (and the gate to 1 for "out"); draws no random numbers."""
        if self.zero_init == "gate":
            nn.init.zeros_(self.gate_scale)
        else:
            nn.init.ones_(self.gate_scale)
            nn.init.zeros_(self.out_linear.weight)
            nn.init.zeros_(self.out_linear.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """f (b, t, c) -> (b, t, d)."""
        return self.gate_scale * self.out_linear(nn.functional.silu(self.in_linear(f)))


class Stage1Output(NamedTuple):
    logits: torch.Tensor  # (b, t, v)
    final_mask: torch.Tensor  # (b, t, 1) float: 1 where the loss applies (masked and not padding)
    x0: torch.Tensor  # (b, t) target ids
    prompt_len: torch.Tensor  # (b,) long
    mask_prob: torch.Tensor  # (b,) mask ratio used per sample
    t: torch.Tensor  # (b,) mask time per sample


class MetisStage1(nn.Module):
    """Text/feature-to-semantic masked generative model.

    Args:
        hidden_size, num_layers, num_heads: estimator size (published: 1536, 16, 16).
        cond_codebook_size: v, number of semantic codes (8192).
        cfg_scale: probability of dropping the prompt for a whole training batch (unconditional case).
        use_phone_cond: build `phone_emb` and the estimator's `cond_mlp` (tts, omni).
        ft_type: the fine-tune's name: None/"tts" build no adapter, any other name (se, tse, vc, l2s,
            omni, or a new task's: the task registry `metis.tasks` picks it) builds `cond_adapter`.
        cond_dim: adapter input size c (1024 for w2v-BERT features, 768 for l2s visual features).
        use_zero_gate_adapter: None means True unless ft_type == "l2s", which uses a plain MLP (docs/reference.md Q11).
        adapter_zero_init: which factor of a fresh zero-gate adapter starts at 0, "gate" (released) or
            "out" (`SimpleAdapter`); either way a fresh adapter is a no-op.
        phone_vocab_size, phone_pad_id: phone table size and its padding row (zero at init).
        mask_prob_floor: lower bound of the training mask ratio sin(πt/2).
        prompt_max_ratio: training prompt lengths are drawn below int(ratio · T).
        gradient_checkpointing: recompute each estimator layer in backward.
        norm_init: from-scratch init of the adaptive-norm gains: "reference" (≈0, as the released code
            ends up with, docs/reference.md Q1) or "unit" (the intended 1; trains faster from scratch). Irrelevant when
            a checkpoint is loaded.
        packing: "off" (the reference's padded computation), "compute" (the estimator and the head
            run on valid frames only, `LlamaNAR`; the same maths as "off", no compute on padding) or
            "utterance" (packed, and each utterance trained exactly as if alone in its batch: prompt
            dropout and prompt length drawn per utterance from its own length, RoPE positions inside
            the utterance). "off" and "compute" keep the reference's batch-coupled draws (one
            prompt-dropout draw per batch, prompt lengths bounded by the padded length, docs/reference.md Q4).
    """

    def __init__(self, hidden_size: int = 1536, num_layers: int = 16, num_heads: int = 16,
                 cond_codebook_size: int = 8192, cfg_scale: float = 0.15, use_phone_cond: bool = False,
                 ft_type: str | None = None, cond_dim: int = 1024, use_zero_gate_adapter: bool | None = None,
                 adapter_zero_init: str = "gate", phone_vocab_size: int = 1024, phone_pad_id: int = 1023, mask_prob_floor: float = 0.2,
                 prompt_max_ratio: float = 0.4, gradient_checkpointing: bool = False, norm_init: str = "reference",
                 packing: str = "off"):
        super().__init__()
        if ft_type is not None and (not isinstance(ft_type, str) or not ft_type):
            raise ValueError(f"ft_type must be None or a task name, got {ft_type!r}")
        d = hidden_size
        self.hidden_size = d
        self.cond_codebook_size = cond_codebook_size
        self.cfg_scale = cfg_scale
        self.use_phone_cond = use_phone_cond
        self.ft_type = ft_type
        self.mask_prob_floor = mask_prob_floor
        self.prompt_max_ratio = prompt_max_ratio
        self.phone_pad_id = phone_pad_id

        self.mask_emb = nn.Embedding(1, d)
        self.cond_emb = nn.Embedding(cond_codebook_size, d)
        self.to_logit = nn.Linear(d, cond_codebook_size)
        self.phone_emb = nn.Embedding(phone_vocab_size, d, padding_idx=phone_pad_id) if use_phone_cond else None
        self.diff_estimator = LlamaNAR(d, num_layers, num_heads, use_cond_mlp=use_phone_cond,
                                       gradient_checkpointing=gradient_checkpointing, packing=packing)
        self.cond_adapter = None
        if ft_type not in NO_ADAPTER_FT_TYPES:
            zero_gate = (ft_type != "l2s") if use_zero_gate_adapter is None else use_zero_gate_adapter
            self.cond_adapter = SimpleAdapter(cond_dim, d, adapter_zero_init) if zero_gate else two_layer_mlp(cond_dim, 4 * d, d)
        self.norm_init = norm_init
        self.reset_parameters()

    @property
    def packing(self) -> str:
        return self.diff_estimator.packing

    @property
    def gradient_checkpointing(self) -> bool:
        return self.diff_estimator.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.diff_estimator.gradient_checkpointing = on

    def reset_parameters(self) -> None:
        """From-scratch init as the reference ends up with (docs/reference.md Q1, Q3): every Linear and Embedding of the
        T2S part N(0, 0.02) with zero biases (adaptive-norm gains included, so they start near 0),
        the phone padding row zero. The adapter keeps torch's default Linear init but for the factor a
        SimpleAdapter starts at 0 (`adapter_zero_init`), so a fresh adapter is a no-op on the input."""
        for emb in (self.mask_emb, self.cond_emb, self.phone_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        if self.phone_emb is not None:
            with torch.no_grad():
                self.phone_emb.weight[self.phone_pad_id].zero_()
        nn.init.normal_(self.to_logit.weight, std=0.02)
        nn.init.zeros_(self.to_logit.bias)
        self.diff_estimator.reset_parameters(std=0.02, norm_init=self.norm_init)
        if isinstance(self.cond_adapter, SimpleAdapter):
            self.cond_adapter.zero_start()

    # ---------------------------------------------------------------- inputs

    def embed_input(self, x0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x0 (b, t) ids, mask (b, t, 1) or (b, t), 1 = masked -> xt (b, t, d) = m·mask_emb + (1-m)·cond_emb(x0)."""
        if mask.dim() == 2:
            mask = mask[..., None]
        mask = mask.to(self.mask_emb.weight.dtype)
        return mask * self.mask_emb.weight[0] + (1 - mask) * self.cond_emb(x0)

    def adapter(self, finetune_cond: torch.Tensor) -> torch.Tensor:
        """finetune_cond (b, t, c) -> (b, t, d), added to every frame, prompt frames included."""
        if self.cond_adapter is None:
            raise ValueError(f"finetune_cond was given but this model (ft_type={self.ft_type!r}) has no cond_adapter")
        return self.cond_adapter(finetune_cond)

    def phone_prefix(self, phone_id: torch.Tensor | None) -> torch.Tensor | None:
        """phone_id (b, p) -> phone embeddings (b, p, d), or None without phones."""
        if phone_id is None:
            return None
        if self.phone_emb is None:
            raise ValueError("phone_id was given but this model was built with use_phone_cond=False")
        return self.phone_emb(phone_id)

    # ---------------------------------------------------------------- training

    def forward_diffusion(self, x0: torch.Tensor, t: torch.Tensor, prompt_len: torch.Tensor | None = None,
                          x_mask: torch.Tensor | None = None):
        """Corrupt x0 at mask time t (docs/reference.md §2.3), drawing from torch's global RNG in the reference's order:
        [u (1,) for prompt dropout, randint (b,) prompt lengths — both only without prompt_len], then a
        Bernoulli (b, t) mask. With packing="utterance" (x_mask given), per utterance: u (b,) and prompt lengths
        U[min(T_i//4, 5), int(ratio · T_i)) from each utterance's own length T_i; padding is never masked.

        Args:
            x0: (b, t) ids; t: (b,) mask time in [0, 1].
            prompt_len: (b,) caller-chosen prompt lengths (Metis); None draws them as the reference does.
            x_mask: (b, t) validity; only used with packing="utterance".
        Returns:
            xt (b, t, d), t (b,), mask (b, t, 1) float (1 = masked), prompt_len (b,) long, mask_prob (b,).
        """
        b, n = x0.shape
        mask_prob = torch.sin(t * math.pi / 2).clamp(min=self.mask_prob_floor)  # (b,)
        lengths = None
        if self.packing == "utterance" and x_mask is not None:
            lengths = x_mask.sum(1).long()
        if prompt_len is None and lengths is not None:
            prompt_len = per_utterance_prompt_len(lengths, self.cfg_scale, self.prompt_max_ratio)
        elif prompt_len is None:
            # One draw per batch: with probability cfg_scale the whole batch is unconditional.
            if torch.rand(1) > self.cfg_scale:
                low, high = min(n // 4, 5), int(n * self.prompt_max_ratio)  # min, not max: reference quirk (docs/reference.md Q4)
                if high <= low:
                    raise ValueError(f"cannot draw a prompt length in [{low}, {high}) for a padded length of {n} frames (docs/reference.md Q4: T2S needs T >= 3)")
                prompt_len = torch.randint(low, high, (b,)).to(x0.device)
            else:
                prompt_len = torch.zeros(b, dtype=torch.long, device=x0.device)
        else:
            prompt_len = torch.as_tensor(prompt_len, dtype=torch.long, device=x0.device)
            if prompt_len.shape != (b,):
                raise ValueError(f"prompt_len must have shape ({b},), got {tuple(prompt_len.shape)}")
            if bool((prompt_len >= n).any()) or bool((prompt_len < 0).any()):
                raise ValueError(f"prompt_len must be in [0, {n}) so that a frame can be masked, got {prompt_len.tolist()}")

        mask = torch.bernoulli(torch.ones(b, n, device=x0.device) * mask_prob[:, None].to(x0.device))
        is_prompt = torch.arange(n, device=x0.device)[None, :] < prompt_len[:, None]
        mask = mask.masked_fill(is_prompt, 0)
        if lengths is not None:
            mask = mask * x_mask.to(mask.dtype)
        # A row with nothing masked gets its first frame after the prompt masked, even if that
        # frame is padding (docs/reference.md Q5; never padding per utterance: prompt_len < T_i).
        empty = (mask.sum(dim=1) == 0).nonzero()[:, 0]
        mask[empty, prompt_len[empty]] = 1
        mask = mask[..., None]
        return self.embed_input(x0, mask), t, mask, prompt_len, mask_prob

    def forward(self, x0: torch.Tensor, x_mask: torch.Tensor, phone_id: torch.Tensor | None = None,
                phone_mask: torch.Tensor | None = None, finetune_cond: torch.Tensor | None = None,
                prompt_len: torch.Tensor | None = None) -> Stage1Output:
        """One training pass: draw t ~ U(0,1) per sample (clamped to [1e-5, 1]), corrupt, predict.

        Args:
            x0: (b, t) target ids. x_mask: (b, t) 1 for valid frames, 0 for padding.
            phone_id, phone_mask: (b, p) phone prefix and its validity (padded slots still take
                RoPE positions, docs/reference.md Q19).
            finetune_cond: (b, t, c) adapter features. prompt_len: (b,) optional fixed prompt lengths.
        Returns:
            Stage1Output; the loss (cross-entropy where final_mask = 1) is left to the trainer.
        """
        t = torch.rand(x0.shape[0], device=x0.device).clamp(1e-5, 1.0)
        xt, t, mask, prompt_len, mask_prob = self.forward_diffusion(x0, t, prompt_len, x_mask)
        logits = self.logits(xt, t, x_mask, phone_id, phone_mask, finetune_cond)
        final_mask = mask * x_mask[..., None].to(mask.dtype)
        return Stage1Output(logits, final_mask, x0, prompt_len, mask_prob, t)

    def logits(self, xt: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor, phone_id: torch.Tensor | None = None,
               phone_mask: torch.Tensor | None = None, finetune_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction of a corrupted batch: xt (b, t, d), t (b,), x_mask (b, t) -> logits (b, t, v).
        When packed, padded frames get zero logits (the head runs on valid frames only)."""
        if finetune_cond is not None:
            xt = xt + self.adapter(finetune_cond)
        embeds = self.diff_estimator(xt, t, x_mask, prefix=self.phone_prefix(phone_id), prefix_mask=phone_mask)
        valid = x_mask != 0
        if self.packing == "off" or bool(valid.all()):
            return self.to_logit(embeds)
        logits = embeds.new_zeros(*embeds.shape[:2], self.cond_codebook_size)
        logits[valid] = self.to_logit(embeds[valid])
        return logits

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def reverse_diffusion(self, prompt: torch.Tensor, target_len: int, phone_id: torch.Tensor | None = None,
                          finetune_cond: torch.Tensor | None = None, temp: float = 0.9, filter_thres: float = 0.98,
                          n_timesteps: int = 25, cfg: float = 2.5, rescale_cfg: float = 0.75,
                          noise: UniformNoise | None = None,
                          preschedule_mask_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Generate target_len ids after a prompt, rows coupled as in the reference (docs/reference.md §2.4, Q6).

        Args:
            prompt: (b, tp) prompt ids; tp may be 0.
            phone_id: (b, p) phones (all valid). finetune_cond: (b, tp + target_len, c) adapter features.
            cfg: guidance weight on hidden states; 0 skips the unconditional pass. The unconditional
                pass drops the prompt and the phones but keeps finetune_cond[:, tp:] (docs/reference.md Q8).
            noise: uniform source (replay recorded draws with ReplayNoise); default torch's RNG.
            preschedule_mask_indices: (target_len,) fixed remask order.
        Returns:
            ids (b, target_len); the caller concatenates them after the prompt.
        """
        b, tp = prompt.shape
        if target_len < 1:
            raise ValueError(f"target_len must be at least 1, got {target_len}")
        if finetune_cond is not None and finetune_cond.shape[:2] != (b, tp + target_len):
            raise ValueError(f"finetune_cond must cover prompt + target: expected shape ({b}, {tp + target_len}, c), "
                             f"got {tuple(finetune_cond.shape)}")
        p = 0 if phone_id is None else phone_id.shape[1]
        return self._reverse_diffusion(prompt, [tp] * b, [int(target_len)] * b, phone_id, [p] * b, finetune_cond,
                                       DecodeConfig(n_timesteps, temp, filter_thres, cfg, rescale_cfg), noise=noise,
                                       coupled=True, preschedule_mask_indices=preschedule_mask_indices)

    @torch.no_grad()
    def reverse_diffusion_rows(self, prompts: Sequence[torch.Tensor], target_lens: Sequence[int], settings: DecodeConfig,
                               *, noises: Sequence[UniformNoise], phones: Sequence[torch.Tensor] | None = None,
                               finetune_conds: Sequence[torch.Tensor] | None = None, fast: Fast = False) -> list[torch.Tensor]:
        """Decode a batch of rows of their own lengths, each as if alone (docs/reference.md Q6 not reproduced).

        Args:
            prompts: per row (tp_r,) prompt ids (tp_r may be 0). target_lens: T_r per row.
            noises: one uniform source per row. phones: per row (p_r,) phone ids, or None for all rows.
            finetune_conds: per row (tp_r + T_r, c) adapter features, or None for all rows.
            fast: batched CFG, top-k-only sampling, bf16 on CUDA; a `FastDecoding` picks precision and
                shape buckets (metis.models.decoding).
        Returns:
            per row the generated ids (T_r,). A batch of one equals `reverse_diffusion` with the same noise.
        """
        b = len(prompts)
        dev = self.cond_emb.weight.device
        for name, rows in (("noises", noises), ("target_lens", target_lens), ("phones", phones), ("finetune_conds", finetune_conds)):
            if rows is not None and len(rows) != b:
                raise ValueError(f"{name} has {len(rows)} rows, prompts has {b}")
        tps = [int(p.shape[0]) for p in prompts]
        lengths = [int(t) for t in target_lens]
        if finetune_conds is not None:
            for r, f in enumerate(finetune_conds):
                if f.shape[0] != tps[r] + lengths[r]:
                    raise ValueError(f"row {r}: finetune_cond has {f.shape[0]} frames, prompt + target = {tps[r]} + {lengths[r]}")
        phone_id = None if phones is None else pad_rows(phones, dev, torch.long)
        fc = None if finetune_conds is None else pad_rows(finetune_conds, dev, self.cond_emb.weight.dtype)
        ids = self._reverse_diffusion(pad_rows(prompts, dev, torch.long), tps, lengths, phone_id,
                                      None if phones is None else [int(p.shape[0]) for p in phones], fc, settings,
                                      noise=list(noises), coupled=False, fast=fast)
        return [ids[r, :T] for r, T in enumerate(lengths)]

    def _reverse_diffusion(self, prompt: torch.Tensor, prompt_lens: list[int], target_lens: list[int],
                           phone_id: torch.Tensor | None, phone_lens: list[int] | None, finetune_cond: torch.Tensor | None,
                           settings: DecodeConfig, *, noise, coupled: bool, fast: Fast = False,
                           preschedule_mask_indices: torch.Tensor | None = None) -> torch.Tensor:
        """The inference forward on padded rows: prompt (b, tp_max), phone_id (b, p_max), finetune_cond
        (b, tp_max + T_max, c), row r valid for its own lengths -> ids (b, T_max).

        Conditional pass: [cond_mlp(phones) ; prompt + a(f)[:tp] ; target + a(f)[tp:]], packed per row.
        Unconditional pass (cfg > 0): target + a(f)[tp:] alone. The phone prefix and the adapter output
        depend on no step, so they are computed once.
        """
        device = self.cond_emb.weight.device
        b, n = len(target_lens), max(target_lens)
        prompt_emb = self.cond_emb(prompt.to(device))  # (b, tp_max, d)
        adapt_t = None
        if finetune_cond is not None:
            adapt = self.adapter(finetune_cond.to(device))  # (b, tp + t, d), constant across steps
            prompt_emb = prompt_emb + segment(adapt, [0] * b, prompt_lens)
            adapt_t = segment(adapt, prompt_lens, target_lens)
        context, context_lens = [prompt_emb], [prompt_lens]
        if phone_id is not None and phone_id.shape[1] > 0:
            context.insert(0, self.diff_estimator.cond_mlp(self.phone_prefix(phone_id.to(device))))  # the prefix (docs/reference.md §1.6)
            context_lens.insert(0, phone_lens)
        packer = Packer(context, context_lens, target_lens)
        m_u = valid_mask(target_lens, n, device).float()
        rows = None if coupled else target_lens
        cfg = settings.cfg

        def logits_fn(ids: torch.Tensor, is_masked: torch.Tensor, t_i: float) -> torch.Tensor:
            cur = self.embed_input(ids, is_masked)  # (b, t, d)
            tgt = cur if adapt_t is None else cur + adapt_t
            with autocast(device, fast):
                e_c, e_u = guided_passes(self.diff_estimator, packer.place(tgt), packer.mask, tgt if cfg > 0 else None,
                                         m_u, t_i, fast)
                e = packer.take(e_c)
                if e_u is not None:
                    e = cfg_combine(e, e_u, cfg, settings.rescale_cfg, rows, fast)
                return self.to_logit(e)

        return masked_decode(logits_fn, target_lens, settings.n_timesteps, temp=settings.temp,
                             filter_thres=settings.filter_thres, noise=noise, device=device, coupled=coupled, fast=fast,
                             preschedule_mask_indices=preschedule_mask_indices)
