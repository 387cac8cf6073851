"""Listen to a run while it trains: decode a few validation utterances to 24 kHz audio after validation,
write them as wavs and log them to every wandb logger.

Stage-1 run (Metis, SSL tokens), per sample:

    first `prompt_seconds` of the utterance's SSL tokens  --net-->  the rest (T - tp frames)
    prompt + generated SSL tokens (T)  --S2A 1-layer-->  acoustic layer 0  --S2A full-->  12 layers
    12 layers  --codec decoder-->  T x 480 samples at 24 kHz

    through the one chain inference uses (metis.inference.generate), all utterances in one batch
    decoded row by row as if alone.

S2A run (MaskGCT S2A), per sample:

    the utterance's SSL tokens (T) + acoustic prompt ac[:tp] from the batch  --net.reverse_diffusion_rows-->
    acoustic codes of the other T - tp frames (a net that never learnt layer 0, predict_layer_1=false,
    gets the batch's layer 0)  --codec decoder-->  (T - tp) x 480 samples

Settings are the published ones (metis.inference.tasks): stage 1 temperature 0.9, top-k 0.98, cfg 2.5,
rescale 0.75; S2A 1-layer cfg 0, S2A full cfg 2.5, temperature 1.5. Step counts are arguments. Every
sample draws from its own generator seeded with `seed + i`, so the same utterances are decoded with the
same noise at every validation (and the training RNG is untouched).

The released S2A reads w2v-BERT 2.0 tokens (8192 RepCodec codes). A stage-1 model trained on other
tokens (the demo's k-means codes) has another vocabulary: the callback says so once and skips.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DeepSpeedStrategy

from metis import audio
from metis.audio import OUTPUT_SAMPLE_RATE
from metis.checkpoints import published
from metis.checkpoints.sources import is_repo_id, resolve_source
from metis.inference.generate import Item, generate, seeded_noises
from metis.inference.loading import load_s2a
from metis.inference.tasks import FRAME_RATE, S2A_1LAYER_DEFAULT, S2A_FULL_DEFAULT, STAGE1_DEFAULTS
from metis.models.acoustic_codec import CodecDecoder
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A
from metis.tokenizers.acoustic import DECODER_FILE
from metis.tokenizers.semantic import load_codec_weights

log = logging.getLogger(__name__)

WANDB_KEY = "val/samples"
S2A_FILES = {"s2a_1layer": "s2a_model/s2a_model_1layer/model.safetensors",
             "s2a_full": "s2a_model/s2a_model_full/model.safetensors"}


def check_source(source: str | os.PathLike, filename: str) -> None:
    """Fail early, with the resolver's own error, when a local source lacks `filename` (repo ids are
    resolved, and downloaded if needed, on first use)."""
    if not is_repo_id(source):
        resolve_source(source, filename)


class AudioSamples(L.Callback):
    """Decode `n_samples` validation utterances to audio every `every_n_validations` validations.

    Runs on global rank 0 at the end of validation (not during the sanity check), under no_grad, with
    the net in eval mode (its previous mode restored after). The S2A models and the codec decoder load
    on first use, once, on the module's device; they are not part of the module or its checkpoints.

    Args:
        every_n_validations: sample at every N-th validation.
        n_samples: utterances taken from the start of the first validation batch.
        prompt_seconds: prompt length (50 frames per second), at most half of each utterance.
        s2a: MaskGCT S2A 1-layer + full (stage-1 runs): repo id, folder laid out like amphion/MaskGCT, or
            an export folder.
        codec: the acoustic codec decoder (`acoustic_codec/model_1.safetensors` of amphion/MaskGCT):
            repo id, folder or file.
        stage1_steps: stage-1 decoding steps (published: 25).
        s2a_1layer_steps, s2a_full_steps: S2A decoding steps per layer (published: [40], [40, 16, 1 x 10]).
        s2a_config: constructor overrides of both S2A models (other sizes; tests use tiny ones).
        codec_config: CodecDecoder constructor arguments (default: the released codec).
        output_dir: wavs go to `output_dir/step{N:08d}/sample{i}.wav`; default `<default_root_dir>/samples`.
        seed: sample i draws from a generator seeded with seed + i.
    Raises:
        CheckpointNotFoundError: a local `s2a` / `codec` source lacks its file (repo ids: on first use).
    """

    def __init__(self, every_n_validations: int = 1, n_samples: int = 2, prompt_seconds: float = 3.0,
                 s2a: str = published.MASKGCT_REPO, codec: str = published.MASKGCT_REPO, stage1_steps: int = 25,
                 s2a_1layer_steps: Sequence[int] = S2A_1LAYER_DEFAULT.n_timesteps,
                 s2a_full_steps: Sequence[int] = S2A_FULL_DEFAULT.n_timesteps, s2a_config: Mapping[str, Any] | None = None,
                 codec_config: Mapping[str, Any] | None = None, output_dir: str | None = None, seed: int = 0):
        if every_n_validations < 1 or n_samples < 1:
            raise ValueError(f"every_n_validations ({every_n_validations}) and n_samples ({n_samples}) must be >= 1")
        if prompt_seconds < 0:
            raise ValueError(f"prompt_seconds must be >= 0, got {prompt_seconds}")
        self.every_n_validations = int(every_n_validations)
        self.n_samples = int(n_samples)
        self.prompt_frames = int(round(prompt_seconds * FRAME_RATE))
        self.s2a, self.codec = str(s2a), str(codec)
        self.stage1_settings = replace(STAGE1_DEFAULTS["tts"], n_timesteps=int(stage1_steps))
        self.s2a_1layer_settings = replace(S2A_1LAYER_DEFAULT, n_timesteps=tuple(int(s) for s in s2a_1layer_steps))
        self.s2a_full_settings = replace(S2A_FULL_DEFAULT, n_timesteps=tuple(int(s) for s in s2a_full_steps))
        self.s2a_config = dict(s2a_config or {})
        self.codec_config = dict(codec_config or {})
        self.output_dir = output_dir
        self.seed = int(seed)
        check_source(self.codec, DECODER_FILE)
        for filename in S2A_FILES.values():
            check_source(self.s2a, filename)  # unused by S2A runs, but a wrong path is a config error either way

        self.validations = 0  # completed (non-sanity) validations, checkpointed
        self.disabled: str | None = None  # why sampling is off for this run (said once)
        self.last_paths: list[Path] = []
        self._due = False
        self._stash: dict[str, list[torch.Tensor]] | None = None
        self._s2a_models: dict[str, MaskGCTS2A] = {}
        self._decoder: CodecDecoder | None = None

    # ---- when ------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._stash = None
        self._due = (not trainer.sanity_checking and self.disabled is None
                     and (self.validations + 1) % self.every_n_validations == 0)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due and trainer.is_global_zero and batch_idx == 0 and dataloader_idx == 0:
            self._stash = self._take(module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        stash, self._stash = self._stash, None
        if not (self._due and trainer.is_global_zero and stash is not None):
            return
        if isinstance(trainer.strategy, DeepSpeedStrategy) and trainer.strategy.zero_stage_3:
            self._disable("the net is sharded over ranks (DeepSpeed ZeRO-3); rank 0 alone cannot run it")
            return
        net = module.net
        was_training = net.training
        net.eval()
        # Building the S2A / codec modules initialises weights from torch's RNG: fork it, so a run's
        # training draws are the same with or without this callback.
        devices = [module.device] if module.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                wavs = self.generate(net, stash, module.device)
        finally:
            net.train(was_training)
        if wavs:
            self._publish(trainer, wavs)

    def state_dict(self) -> dict:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = int(state_dict.get("validations", 0))

    # ---- what ------------------------------------------------------------------------------------
    def _take(self, module, batch: dict) -> dict[str, list[torch.Tensor]]:
        """The first n_samples utterances, cut to their valid frames, on the CPU."""
        sem, sem_mask = module.semantic_tokens(batch)  # tokenizes raw-audio batches
        n = min(self.n_samples, sem.shape[0])
        lens = sem_mask[:n].sum(dim=1).long().tolist()
        keep = [i for i, t in enumerate(lens) if t >= 2]  # a frame of prompt room and one to generate
        out = {"sem": [sem[i, : lens[i]].detach().cpu() for i in keep]}
        if "ac" in batch:
            ac, ac_mask = batch["ac"], batch.get("ac_mask")
            ac_lens = ac_mask[:n].sum(dim=1).long().tolist() if ac_mask is not None else [ac.shape[1]] * n
            out["ac"] = [ac[i, : ac_lens[i]].detach().long().cpu() for i in keep]
        return out

    def generate(self, net: torch.nn.Module, stash: dict[str, list[torch.Tensor]], device: torch.device) -> list[np.ndarray]:
        """Waveforms (float32, 24 kHz) of the stashed utterances; [] when this run cannot be decoded."""
        if isinstance(net, MetisStage1):
            return self._stage1_samples(net, stash, device)
        if isinstance(net, MaskGCTS2A):
            return self._s2a_samples(net, stash, device)
        self._disable(f"no audio decoding for a {type(net).__name__} net")
        return []

    def _stage1_samples(self, net: MetisStage1, stash, device) -> list[np.ndarray]:
        s1 = self._load_s2a("s2a_1layer", device)
        if s1.cond_codebook_size != net.cond_codebook_size:
            self._s2a_models.clear()  # free the memory for the rest of the run
            self._disable(f"the stage-1 model has {net.cond_codebook_size} SSL codes but the S2A model ({self.s2a}) reads "
                          f"{s1.cond_codebook_size}: decoding to audio needs a stage-1 model trained on the S2A's tokens "
                          f"(w2v-BERT 2.0 / RepCodec tokens for the released MaskGCT)")
            return []
        sf = self._load_s2a("s2a_full", device)
        decoder = self._load_decoder(device)
        if not self._codec_fits(sf.codebook_size, sf.num_quantizer):
            return []
        items = self.stage1_items(stash, sf.num_quantizer)
        out = generate(items, net, s1, sf, decode=lambda codes: self._codes_to_wav(decoder, codes), noise_device="cpu")
        return [self._finite(w.numpy()) for w in out.wavs]

    def stage1_items(self, stash: dict[str, list[torch.Tensor]], num_quantizer: int) -> list[Item]:
        """The decoding items of the stashed utterances: the first prompt frames (at most half) are the
        prompt, the rest is generated; the batch's acoustic tokens, when it has all `num_quantizer`
        layers, prompt S2A with the speaker's voice. Utterance i draws from a generator seeded seed + i."""
        items = []
        for i, sem in enumerate(stash["sem"]):
            t = sem.shape[0]
            tp = min(self.prompt_frames, t // 2)
            ac = stash.get("ac", [None] * len(stash["sem"]))[i]
            ac_prompt = ac[:tp] if ac is not None and ac.shape[1] >= num_quantizer and tp else sem.new_zeros(0, num_quantizer)
            items.append(Item(prompt_ids=sem[:tp], target_len=t - tp, acoustic_prompt=ac_prompt, keep_prompt=True,
                              stage1=self.stage1_settings, s2a_1layer=self.s2a_1layer_settings,
                              s2a_full=self.s2a_full_settings, seed=self.seed + i))
        return items

    def _s2a_samples(self, net: MaskGCTS2A, stash, device) -> list[np.ndarray]:
        decoder = self._load_decoder(device)
        if not self._codec_fits(net.codebook_size, net.num_quantizer):
            return []
        if "ac" not in stash and not net.predict_layer_1:
            self._disable("this S2A model does not predict layer 0 and the batch has no acoustic tokens to give it")
            return []
        settings = self.s2a_1layer_settings if net.num_quantizer == 1 else self.s2a_full_settings
        conds, prompts, gts = [], [], []
        for i, sem in enumerate(stash["sem"]):
            ac = stash["ac"][i] if "ac" in stash else None
            t = sem.shape[0] if ac is None else min(sem.shape[0], ac.shape[0])  # the streams differ by ~1 frame (docs/reference.md Q10)
            tp = min(self.prompt_frames, t // 2) if ac is not None else 0
            conds.append(sem[:t])
            prompts.append(ac[:tp] if tp else sem.new_zeros(0, net.num_quantizer))
            gts.append(None if net.predict_layer_1 else ac[tp:t, :1])
        codes = net.reverse_diffusion_rows(conds, prompts, settings.layers(net.num_quantizer),
                                           noises=seeded_noises([self.seed + i for i in range(len(conds))]),
                                           gt_codes=None if net.predict_layer_1 else gts)
        return [self._finite(self._codes_to_wav(decoder, c[None].to(device))[0].float().cpu().numpy()) for c in codes]

    @staticmethod
    def _codes_to_wav(decoder: CodecDecoder, codes: torch.Tensor) -> torch.Tensor:
        """codes (1, t, q) -> (1, t * 480) waveform."""
        return decoder(decoder.vq2emb(codes.long().permute(2, 0, 1)))[:, 0]

    @staticmethod
    def _finite(wav: np.ndarray) -> np.ndarray:
        if not np.isfinite(wav).all():
            log.warning("audio samples: the decoded waveform has non-finite values (set to 0)")
            wav = np.nan_to_num(wav, nan=0.0, posinf=0.0, neginf=0.0)
        return wav

    # ---- models, loaded once on first use ------------------------------------------------------------
    def _load_s2a(self, which: str, device: torch.device) -> MaskGCTS2A:
        if which not in self._s2a_models:
            model = load_s2a(which, self.s2a, overrides=self.s2a_config, device=device)
            self._s2a_models[which] = model.eval().requires_grad_(False)
        return self._s2a_models[which]

    def _load_decoder(self, device: torch.device) -> CodecDecoder:
        if self._decoder is None:
            decoder = CodecDecoder(**self.codec_config)
            load_codec_weights(decoder, self.codec, DECODER_FILE)
            self._decoder = decoder.eval().requires_grad_(False).to(device)
        return self._decoder

    def _codec_fits(self, codebook_size: int, num_quantizer: int) -> bool:
        q = self._decoder.quantizer
        have_q, have_v = q.num_quantizers, q.quantizers[0].codebook.num_embeddings
        if codebook_size != have_v or num_quantizer > have_q:
            self._disable(f"the acoustic tokens ({num_quantizer} layers x {codebook_size} codes) do not fit the codec "
                          f"({self.codec}: {have_q} layers x {have_v} codes)")
            return False
        return True

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        log.warning(f"audio samples are off for this run: {reason}")

    # ---- where ---------------------------------------------------------------------------------------
    def _publish(self, trainer: L.Trainer, wavs: list[np.ndarray]) -> None:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.default_root_dir) / "samples"
        folder = root / f"step{trainer.global_step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        self.last_paths = []
        for i, wav in enumerate(wavs):
            path = folder / f"sample{i}.wav"
            audio.save(path, wav, OUTPUT_SAMPLE_RATE)
            self.last_paths.append(path)
        captions = [f"sample{i} (step {trainer.global_step}, {w.shape[0] / OUTPUT_SAMPLE_RATE:.2f} s)" for i, w in enumerate(wavs)]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_audio(WANDB_KEY, list(wavs), step=trainer.global_step,
                                 sample_rate=[OUTPUT_SAMPLE_RATE] * len(wavs), caption=captions)
        log.info(f"audio samples at step {trainer.global_step}: {folder}")


__all__ = ["AudioSamples", "check_source"]
