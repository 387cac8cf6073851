"""The one generation chain: stage 1 -> S2A 1-layer -> S2A full -> codec (docs/reference.md §6).

`Pipeline` (infer.py), the `AudioSamples` training callback and benchmarks/bench_inference.py all
decode through `generate`, so the audio heard during training is made by the decoder inference uses.

Per item of a batch (items share their settings; the stage-1 model is the caller's choice):

    stage 1:  prompt ids + target_len [+ phones] [+ finetune_cond]  -> generated semantic ids
    S2A 1L:   cond_emb(prompt ids + generated) (keep_prompt=False: generated only), acoustic prompt -> layer 0
    S2A full: same, layer 0 given                                   -> Nq layers (T_a = len - p, docs/reference.md Q10)
    codec:    Nq layers -> T_a x 480 samples at 24 kHz

Every row is decoded as if alone (`reverse_diffusion_rows`) and draws from its own generator seeded
with `item.seed`, shared by the three stages in that order, so a result does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from metis.inference.tasks import S2ASettings
from metis.models.decoding import DecodeConfig, UniformNoise


@dataclass
class Item:
    """One stage-1 + S2A decoding unit (a request, one window of it, or one validation utterance).

    prompt_ids (tp,), target_len T, acoustic_prompt (p, q) (p may be 0), phones (P,), finetune_cond
    (tp + T, c); keep_prompt: the S2A condition is prompt ids + generated (else generated only: se).
    task / request / chunk / start are the pipeline's bookkeeping.
    """

    prompt_ids: torch.Tensor
    target_len: int
    acoustic_prompt: torch.Tensor
    keep_prompt: bool
    stage1: DecodeConfig
    s2a_1layer: S2ASettings
    s2a_full: S2ASettings
    phones: torch.Tensor | None = None
    finetune_cond: torch.Tensor | None = None
    seed: int = 0
    task: str | None = None
    request: int = 0
    chunk: int = 0
    start: int = 0


class Generated(NamedTuple):
    semantic: list[torch.Tensor]  # per item (T_s,): prompt + generated ids (generated only without keep_prompt)
    codes: list[torch.Tensor]  # per item (T_a, q)
    wavs: list[torch.Tensor] | None  # per item (T_a x 480,) float32 on the CPU, when a codec decoder is given


def seeded_noises(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[UniformNoise]:
    """One uniform source per row, a generator seeded with its seed on `device` (CPU: as the reference draws)."""
    return [UniformNoise(torch.Generator(device=torch.device(device)).manual_seed(int(s))) for s in seeds]


@torch.no_grad()
def generate(items: Sequence[Item], stage1: torch.nn.Module, s2a_1layer: torch.nn.Module, s2a_full: torch.nn.Module, *,
             decode: Callable[[torch.Tensor], torch.Tensor] | None = None, fast: bool = False,
             noise_device: str | torch.device = "cpu") -> Generated:
    """Decode one batch of items that share their settings.

    Args:
        stage1: a MetisStage1 (phones / adapter as the items need). s2a_1layer, s2a_full: MaskGCTS2A.
        decode: codes (1, T_a, q) -> waveform (1, T_a x 480), e.g. `AcousticTokenizer.decode`; None skips audio.
        fast: batched CFG, top-k-only sampling, bf16 on CUDA (metis.models.decoding); False is exact.
        noise_device: where the per-item generators live.
    """
    if len({(it.stage1, it.s2a_1layer, it.s2a_full) for it in items}) != 1:
        raise ValueError("a batch must share its decoding settings")
    it0 = items[0]
    if any((it.phones is None) != (it0.phones is None) or (it.finetune_cond is None) != (it0.finetune_cond is None)
           for it in items):
        raise ValueError("the items of a batch must all have phones (finetune_cond) or none")
    noises = seeded_noises([it.seed for it in items], noise_device)
    gen = stage1.reverse_diffusion_rows(
        [it.prompt_ids for it in items], [it.target_len for it in items], it0.stage1, noises=noises,
        phones=None if it0.phones is None else [it.phones for it in items],
        finetune_conds=None if it0.finetune_cond is None else [it.finetune_cond for it in items], fast=fast)
    sem = [torch.cat([it.prompt_ids.to(g.device), g]) if it.keep_prompt else g for it, g in zip(items, gen)]
    prompts = [it.acoustic_prompt for it in items]
    layer0 = s2a_1layer.reverse_diffusion_rows(sem, prompts, it0.s2a_1layer.layers(s2a_1layer.num_quantizer),
                                               noises=noises, fast=fast)
    codes = s2a_full.reverse_diffusion_rows(sem, prompts, it0.s2a_full.layers(s2a_full.num_quantizer), noises=noises,
                                            gt_codes=layer0, fast=fast)
    wavs = None if decode is None else [decode(c[None])[0].float().cpu() for c in codes]
    return Generated(sem, codes, wavs)
