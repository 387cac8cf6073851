"""Lightning modules that train the two codecs of MaskGCT / Metis (docs/reference.md §10.2.1, §10.2.2).

AcousticCodecModule: the 24 kHz acoustic codec as a GAN, two optimizers, manual optimization. Per batch
of waveform crops x (b, 1, n), once the discriminator is on (`adversarial_start` generator steps):

    x̂, codes, commit, book = codec(x)
    D step:  L_D = Σ_k (1 - D_k(x))² + D_k(x̂.detach())²                       -> discriminator optimizer
    G step:  L_G = λrec·mel(x̂, x) + Σ_q (book_q + commit_q)                   (weights 1.0 / 0.25 inside)
                 + λadv·Σ_k (1 - D_k(x̂))² + λfeat·relative_fm(D(x), D(x̂))    -> codec optimizer

SemanticCodecModule: RepCodec on normalised SSL features f (b, t, h) of 16 kHz crops, computed on the
fly by a frozen feature extractor (w2v-BERT layer 17 at real scale, the demo's fbank features offline):

    L = L1(decoder(quantize(encoder(f))), f) + codebook (1.0) + commitment (0.15)

Both log codebook usage and perplexity per stage over a window of steps, and can restart dead codes
(`metis.lightning.codebook`). Batch keys (from `metis.lightning.datamodule.AudioCropDataModule`):
`wav` (b, 1, n) float32 crops at the codec's rate.

Note on step counts: with manual optimization Lightning's `global_step` (and so `max_steps`,
checkpoint intervals, `log_every_n_steps`) counts optimizer steps of both nets: 2 per batch once the
discriminator is on. `train/generator_steps` counts batches.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import lightning as L
import torch
from torch import nn

from metis.lightning.codebook import CodebookUsage, restart_dead_codes
from metis.lightning.codec_losses import (MultiScaleMelLoss, discriminator_loss, feature_l1_loss, feature_matching_loss,
                                          generator_adversarial_loss)
from metis.lightning.fault_tolerance import NonFiniteGuard
from metis.lightning.masked_module import capture_rng_state, restore_rng_state
from metis.models.acoustic_codec import AcousticCodec
from metis.models.discriminators import CodecDiscriminator
from metis.models.semantic_codec import RepCodec


class CodebookMonitor:
    """Codebook usage/perplexity logging and dead-code restarts, shared by both codec modules.

    Args:
        window: steps per usage window (usage is logged and dead codes restarted at its end).
        restart: re-seed dead codes at the end of a window ...
        restart_below: ... when a stage's usage in the window is below this fraction (1.0: any dead code).
    """

    def __init__(self, num_stages: int, codebook_size: int, window: int = 50, restart: bool = False,
                 restart_below: float = 1.0):
        if window < 1:
            raise ValueError(f"usage window must be >= 1 step, got {window}")
        self.usage = CodebookUsage(num_stages, codebook_size)
        self.window, self.restart, self.restart_below = int(window), bool(restart), float(restart_below)
        self.restarted = 0

    def step(self, module: L.LightningModule, quantizer, z: torch.Tensor, codes: torch.Tensor) -> None:
        """After one training step: count `codes` (q, b, t); at a window's end log and maybe restart from z."""
        self.usage.update(codes)
        if self.usage.steps < self.window:
            return
        usage, ppl = self.usage.usage(), self.usage.perplexity()
        log = dict(on_step=True, on_epoch=False)
        module.log("train/codebook_usage", usage.mean(), prog_bar=True, **log)
        module.log("train/codebook_perplexity", ppl.mean(), **log)
        for i in range(min(len(usage), 2)):  # first stages: the ones that collapse first
            module.log(f"train/codebook_usage_q{i}", usage[i], **log)
            module.log(f"train/codebook_perplexity_q{i}", ppl[i], **log)
        if self.restart:
            dead = [d if u < self.restart_below else d[:0] for d, u in zip(self.usage.dead(), usage)]
            self.restarted += restart_dead_codes(quantizer, z, dead)
            module.log("train/codes_restarted", float(self.restarted), **log)
        self.usage.reset()

    def state_dict(self) -> dict:
        return {"counts": self.usage.counts.clone(), "steps": self.usage.steps, "restarted": self.restarted}

    def load_state_dict(self, state: dict) -> None:
        self.usage.counts.copy_(state["counts"])
        self.usage.steps = int(state["steps"])
        self.restarted = int(state["restarted"])


class _CodecModule(L.LightningModule):
    """What both codec modules share: validation history, RNG and monitor state in the checkpoint."""

    net: nn.Module
    monitor: CodebookMonitor
    nonfinite_guard: NonFiniteGuard

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and "val/loss" in self.trainer.callback_metrics:
            self.val_history.append(float(self.trainer.callback_metrics["val/loss"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = capture_rng_state()
        checkpoint["codebook_monitor"] = self.monitor.state_dict()
        checkpoint["nonfinite_guard"] = self.nonfinite_guard.state_dict()
        checkpoint["generator_steps"] = self.generator_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "codebook_monitor" in checkpoint:
            self.monitor.load_state_dict(checkpoint["codebook_monitor"])
        if "nonfinite_guard" in checkpoint:
            self.nonfinite_guard.load_state_dict(checkpoint["nonfinite_guard"])
        self.generator_steps = int(checkpoint.get("generator_steps", 0))
        if checkpoint.get("rng_state") is not None:
            trainer = self._trainer
            restore_rng_state(checkpoint["rng_state"], trainer.global_rank if trainer is not None else 0,
                              trainer.world_size if trainer is not None else 1)


class AcousticCodecModule(_CodecModule):
    """GAN training of the acoustic codec (see the module docstring).

    Args:
        net: the AcousticCodec (encoder + quantizer + Vocos decoder).
        discriminator: the MPD + multi-band STFT discriminators.
        optimizer: partial of a torch optimizer for the codec (called with its parameters).
        d_optimizer: partial for the discriminator (default: the codec's).
        scheduler: partial of an LR scheduler, one per optimizer, stepped once per batch (None: constant).
        mel_loss: the multi-scale mel reconstruction loss module.
        lambda_mel, lambda_adv, lambda_feat: loss weights (paper: 10, 2, 2).
        lambda_vq: multiplies the quantizer's codebook + commitment losses (their own weights, 1.0 and
            0.25, are the quantizer's `codebook_loss_weight` / `commitment`).
        adversarial_start: generator steps trained on the reconstruction losses alone before the
            discriminator starts (0: from the start).
        grad_clip, d_grad_clip: gradient-norm clipping of each net (0: off).
        usage_window, dead_code_restart, restart_below: see CodebookMonitor.
        max_consecutive_nonfinite: a NaN/inf loss skips the batch; this many in a row stop the run.
    """

    def __init__(self, net: AcousticCodec, discriminator: CodecDiscriminator, optimizer: Callable,
                 d_optimizer: Callable | None = None, scheduler: Callable | None = None,
                 mel_loss: MultiScaleMelLoss | None = None, lambda_mel: float = 10.0, lambda_adv: float = 2.0,
                 lambda_feat: float = 2.0, lambda_vq: float = 1.0, adversarial_start: int = 0,
                 grad_clip: float = 1000.0, d_grad_clip: float = 10.0, usage_window: int = 50,
                 dead_code_restart: bool = False, restart_below: float = 1.0, max_consecutive_nonfinite: int = 10):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "discriminator", "optimizer", "d_optimizer", "scheduler", "mel_loss"],
                                  logger=False)
        self.automatic_optimization = False
        self.net = net
        self.discriminator = discriminator
        self.mel_loss = mel_loss if mel_loss is not None else MultiScaleMelLoss()
        self.optimizer_factory = optimizer
        self.d_optimizer_factory = d_optimizer or optimizer
        self.scheduler_factory = scheduler
        vq = net.decoder.quantizer
        self.monitor = CodebookMonitor(vq.num_quantizers, vq.quantizers[0].codebook.num_embeddings, usage_window,
                                       dead_code_restart, restart_below)
        self.nonfinite_guard = NonFiniteGuard(max_consecutive_nonfinite)
        self.generator_steps = 0
        self.val_history: list[float] = []

    @property
    def adversarial(self) -> bool:
        return self.generator_steps >= self.hparams.adversarial_start

    def _step(self, optimizer, loss: torch.Tensor, clip: float) -> None:
        """Backward, clip (norm, when `clip` > 0) and step `optimizer`, unless `loss` is non-finite (the
        guard then counts the skipped step)."""
        if self.nonfinite_guard.check(loss, self.trainer.strategy, self.trainer.global_step):
            return
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        h = self.hparams
        t0 = time.perf_counter()
        wav = batch["wav"]
        opt_g, opt_d = self.optimizers()
        log = dict(on_step=True, on_epoch=False, batch_size=wav.shape[0])
        wav_hat, codes, commit, book = self.net(wav)
        stats: dict[str, torch.Tensor] = {}

        if self.adversarial:  # D step on the current reconstruction
            self.toggle_optimizer(opt_d)
            real, fake = self.discriminator(wav), self.discriminator(wav_hat.detach())
            loss_d = discriminator_loss(real, fake)
            self._step(opt_d, loss_d, h.d_grad_clip)
            self.untoggle_optimizer(opt_d)
            stats["loss_d"] = loss_d.detach()
            stats["d_real"] = torch.stack([r[-1].mean() for r in real]).mean().detach()
            stats["d_fake"] = torch.stack([f[-1].mean() for f in fake]).mean().detach()

        # G step
        self.toggle_optimizer(opt_g)
        mel = self.mel_loss(wav_hat, wav)
        vq = (commit + book).sum()
        loss = h.lambda_mel * mel + h.lambda_vq * vq
        stats.update(mel_loss=mel.detach(), commitment_loss=commit.sum().detach(), codebook_loss=book.sum().detach())
        if self.adversarial:
            fake = self.discriminator(wav_hat)
            with torch.no_grad():
                real = self.discriminator(wav)
            adv, feat = generator_adversarial_loss(fake), feature_matching_loss(real, fake)
            loss = loss + h.lambda_adv * adv + h.lambda_feat * feat
            stats.update(adv_loss=adv.detach(), feature_loss=feat.detach())
        self._step(opt_g, loss, h.grad_clip)
        self.untoggle_optimizer(opt_g)
        self.generator_steps += 1

        for sched in self._schedulers():
            sched.step()
        self.log("train/loss", loss.detach(), prog_bar=True, **log)
        for name, value in stats.items():
            self.log(f"train/{name}", value, **log)
        self.log("train/generator_steps", float(self.generator_steps), **log)
        self.log("train/nonfinite_skipped", float(self.nonfinite_guard.skipped), **log)
        self.log("train/lr", opt_g.param_groups[0]["lr"], **log)
        self.log("train/audio_seconds_per_s", wav.numel() / self.net.hop_length / 50.0 / max(time.perf_counter() - t0, 1e-9), **log)
        with torch.no_grad():
            z = self.net.encoder(wav) if self.monitor.restart and self.monitor.usage.steps + 1 >= self.monitor.window else None
        self.monitor.step(self, self.net.decoder.quantizer, z, codes)

    def _schedulers(self) -> list:
        s = self.lr_schedulers()
        return [] if s is None else s if isinstance(s, list) else [s]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        wav = batch["wav"]
        wav_hat, *_ = self.net(wav)
        mel = self.mel_loss(wav_hat, wav)
        n = wav.shape[0]
        self.log("val/loss", mel, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val/mel_loss", mel, sync_dist=True, batch_size=n)
        self.log("val/l1_wav", (wav_hat - wav).abs().mean(), sync_dist=True, batch_size=n)

    def configure_optimizers(self):
        opt_g = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        opt_d = self.d_optimizer_factory(params=list(self.discriminator.parameters()))
        if self.scheduler_factory is None:
            return [opt_g, opt_d]
        return [opt_g, opt_d], [self.scheduler_factory(optimizer=opt_g), self.scheduler_factory(optimizer=opt_d)]


class SemanticCodecModule(_CodecModule):
    """RepCodec (VQ-VAE) on normalised SSL features (see the module docstring).

    Args:
        net: the RepCodec; its `hidden_size` must equal the features' width.
        features: frozen feature extractor with `features(list of (n,) 16 kHz) -> list of (t, h)`:
            `metis.tokenizers.semantic.W2vBertFeatureExtractor` (with the normalisation stats) or the
            demo's `metis.tokenizers.kmeans.KMeansTokenizer` (CMVN fbank).
        optimizer, scheduler: partials (automatic optimization: Lightning steps them).
        lambda_rec: weight of the L1 reconstruction (the quantizer's codebook/commitment weights, 1.0
            and 0.15, are its own).
        usage_window, dead_code_restart, restart_below: see CodebookMonitor.
    """

    def __init__(self, net: RepCodec, features: Any, optimizer: Callable, scheduler: Callable | None = None,
                 lambda_rec: float = 1.0, usage_window: int = 20, dead_code_restart: bool = True,
                 restart_below: float = 0.9, max_consecutive_nonfinite: int = 10):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "features", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.features = features
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        vq = net.quantizer
        self.monitor = CodebookMonitor(vq.num_quantizers, net.codebook_size, usage_window, dead_code_restart, restart_below)
        self.nonfinite_guard = NonFiniteGuard(max_consecutive_nonfinite)
        self.generator_steps = 0
        self.val_history: list[float] = []

    def on_fit_start(self) -> None:
        if hasattr(self.features, "to"):
            self.features.to(self.device)

    def feature_batch(self, batch: dict) -> torch.Tensor:
        """wav (b, 1, n) 16 kHz crops -> normalised features (b, t, h) (equal-length crops: no padding)."""
        with torch.no_grad():
            feats = self.features.features(list(batch["wav"][:, 0]))
        return torch.stack([f.to(self.device).float() for f in feats])

    def model_step(self, feat: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        z = self.net.encode(feat)  # (b, h, t)
        quantized, codes, commit, book, _ = self.net.quantizer(z)
        x_rec = self.net.decoder(quantized)  # (b, t, h)
        rec = feature_l1_loss(x_rec, feat)
        loss = self.hparams.lambda_rec * rec + (commit + book).sum()
        stats = {"rec_loss": rec.detach(), "commitment_loss": commit.sum().detach(), "codebook_loss": book.sum().detach()}
        return loss, stats, z, codes

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feat = self.feature_batch(batch)
        loss, stats, z, codes = self.model_step(feat)
        log = dict(on_step=True, on_epoch=False, batch_size=feat.shape[0])
        self.generator_steps += 1
        if self.nonfinite_guard.check(loss, self.trainer.strategy, self.trainer.global_step):
            self.log("train/nonfinite_skipped", float(self.nonfinite_guard.skipped), **log)
            return self.nonfinite_guard.skip_output(loss)
        self.log("train/loss", loss.detach(), prog_bar=True, **log)
        for name, value in stats.items():
            self.log(f"train/{name}", value, **log)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], **log)
        self.monitor.step(self, self.net.quantizer, z.detach(), codes)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.nonfinite_guard.drop_gradients(self)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        feat = self.feature_batch(batch)
        _, stats, _, codes = self.model_step(feat)
        n = feat.shape[0]
        self.log("val/loss", stats["rec_loss"], prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val/rec_loss", stats["rec_loss"], sync_dist=True, batch_size=n)
        # how much of the features a code explains: the trivial baseline (all zeros = the mean) scores 1
        self.log("val/rec_loss_vs_mean", stats["rec_loss"] / feat.abs().mean().clamp(min=1e-8), sync_dist=True, batch_size=n)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "step", "frequency": 1}}
