"""Listen to an acoustic codec while it trains: after each validation, resynthesise the first validation
crops, write original and resynthesis as wavs and log both (audio + log-mel spectrograms side by side)
to every wandb logger.

    <output_dir>/step{N:08d}/sample{i}_real.wav, sample{i}_codec.wav     (N = global step)
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from metis import audio

log = logging.getLogger(__name__)


def log_mel_image(wavs: list[np.ndarray], sample_rate: int, titles: list[str]) -> np.ndarray:
    """RGB image (h, w, 3) uint8 of the log-mel spectrograms of `wavs`, stacked vertically."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=80)
    fig, axes = plt.subplots(len(wavs), 1, figsize=(8, 2 * len(wavs)), squeeze=False)
    for ax, w, title in zip(axes[:, 0], wavs, titles):
        spec = mel(torch.as_tensor(w).float()).clamp(min=1e-5).log10().numpy()
        ax.imshow(spec, origin="lower", aspect="auto", interpolation="none")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


class CodecSamples(L.Callback):
    """Resynthesise `n_samples` validation crops after every validation (not the sanity check).

    Args:
        n_samples: crops taken from the start of the first validation batch.
        sample_rate: of the crops (24000 for the acoustic codec).
        output_dir: where the wavs go (default `<default_root_dir>/samples`).
    """

    def __init__(self, n_samples: int = 2, sample_rate: int = 24000, output_dir: str | None = None):
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples, self.sample_rate = int(n_samples), int(sample_rate)
        self.output_dir = output_dir
        self._stash: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and "wav" in batch:
            self._stash = batch["wav"][: self.n_samples].detach()

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        wav, self._stash = self._stash, None
        if wav is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        was_training = module.net.training
        module.net.eval()
        try:
            wav_hat = module.net(wav)[0]
        finally:
            module.net.train(was_training)
        real = [w[0].float().cpu().numpy() for w in wav]
        fake = [w[0].float().cpu().numpy() for w in wav_hat]
        out = Path(self.output_dir or Path(trainer.default_root_dir) / "samples") / f"step{trainer.global_step:08d}"
        out.mkdir(parents=True, exist_ok=True)
        for i, (r, f) in enumerate(zip(real, fake)):
            audio.save(out / f"sample{i}_real.wav", r, self.sample_rate)
            audio.save(out / f"sample{i}_codec.wav", f, self.sample_rate)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                pairs = [x for r, f in zip(real, fake) for x in (r, f)]
                titles = [f"sample{i} {k}" for i in range(len(real)) for k in ("real", "codec")]
                logger.log_audio("val/codec_samples", pairs, step=trainer.global_step, caption=titles,
                                 sample_rate=[self.sample_rate] * len(pairs))
                logger.log_image("val/codec_spectrograms", [log_mel_image(pairs, self.sample_rate, titles)],
                                 step=trainer.global_step)
        log.info("codec samples at step %d in %s", trainer.global_step, out)
