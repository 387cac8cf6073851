"""Acoustic tokens: 24 kHz speech <-> 12 stages x 1024 codes at 50 Hz (docs/reference.md §5).

Codes are stored (t, q) per utterance, and (b, t, q) in batches, as the reference AudioTokenizer does;
the codec itself works on (q, b, t). A waveform of n samples gives the encoder's floor-chain frame
count (n / 480 when 480 divides n), and t frames decode to exactly t * 480 samples.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from metis.models.acoustic_codec import CodecDecoder, CodecEncoder
from metis.tokenizers.base import file_sha256
from metis.tokenizers.semantic import MASKGCT_REPO, _as_mono, load_codec_weights

ENCODER_FILE = "acoustic_codec/model.safetensors"
EXPORT_CONFIG = "codec_config.json"  # written beside the files by metis.lightning.callbacks.ExportPublished
DECODER_FILE = "acoustic_codec/model_1.safetensors"


class AcousticTokenizer:
    """SpeechTokenizer-like wrapper of the MaskGCT acoustic codec (multi-codebook: codes are (t, q)).

    Args:
        encoder: CodecEncoder weights: the file, a folder laid out like amphion/MaskGCT
            (`acoustic_codec/model.safetensors` inside) or a Hub repo id.
        decoder: CodecDecoder weights (quantizer + Vocos), found the same way
            (`acoustic_codec/model_1.safetensors`).
        encoder_config, decoder_config: constructor arguments (default: the released codec).
        device: where the codec runs.
        batch_size: utterances per forward (utterances are grouped by length: the convolutions have no
            mask, so zero padding would change the last frames).
    """

    name = "amphion-codec-24k"
    sample_rate = 24000
    frame_rate = 50.0

    def __init__(
        self,
        encoder: str | Path = MASKGCT_REPO,
        decoder: str | Path = MASKGCT_REPO,
        *,
        encoder_config: dict | None = None,
        decoder_config: dict | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.encoder = CodecEncoder(**(encoder_config or {}))
        self.decoder = CodecDecoder(**(decoder_config or {}))
        self.encoder_path = load_codec_weights(self.encoder, encoder, ENCODER_FILE)
        self.decoder_path = load_codec_weights(self.decoder, decoder, DECODER_FILE)
        self.encoder.eval().requires_grad_(False).to(self.device)
        self.decoder.eval().requires_grad_(False).to(self.device)
        self.num_quantizers = self.decoder.quantizer.num_quantizers
        self.codebook_size = self.decoder.quantizer.quantizers[0].codebook.num_embeddings
        self.hop_length = self.encoder.hop_length
        if self.hop_length != self.decoder.hop_size:
            raise ValueError(f"acoustic codec: encoder hop {self.hop_length} != decoder hop_size {self.decoder.hop_size}")
        self.frame_rate = self.sample_rate / self.hop_length
        self._identity: dict[str, str] | None = None

    @classmethod
    def from_export(cls, path: str | Path, **kwargs) -> "AcousticTokenizer":
        """The codec a training run exported (`python train.py experiment=demo_acoustic_codec`): the
        folder holding `acoustic_codec/model{,_1}.safetensors` and `codec_config.json` (its sizes)."""
        config_path = Path(path) / EXPORT_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{path} is not an acoustic codec export: no {EXPORT_CONFIG} (train one with "
                                    f"`python train.py experiment=demo_acoustic_codec`)")
        config = json.loads(config_path.read_text())
        return cls(path, path, encoder_config=config.get("encoder") or None, decoder_config=config.get("decoder") or None,
                   **kwargs)

    def to(self, device: str | torch.device) -> "AcousticTokenizer":
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.decoder.to(self.device)
        return self

    def identity(self) -> dict[str, str]:
        if self._identity is None:  # hashing ~700 MB once is enough
            self._identity = {
                "name": self.name,
                "encoder_sha256": file_sha256(self.encoder_path),
                "decoder_sha256": file_sha256(self.decoder_path),
            }
        return dict(self._identity)

    def num_frames(self, n: int) -> int:
        """Code frames for n samples at 24 kHz."""
        return self.encoder.num_frames(n)

    @torch.no_grad()
    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 24 kHz -> codes (t_i, q) int64, on the inputs' device."""
        wavs = _as_mono(wavs, self.sample_rate, 1)
        for i, w in enumerate(wavs):
            if self.num_frames(w.numel()) < 1:
                raise ValueError(f"waveform {i}: {w.numel()} samples at {self.sample_rate} Hz give no codec frame")
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(wavs):
            by_len[w.numel()].append(i)
        codes: list[torch.Tensor | None] = [None] * len(wavs)
        for idx in by_len.values():
            for start in range(0, len(idx), self.batch_size):
                group = idx[start : start + self.batch_size]
                x = torch.stack([wavs[i] for i in group]).to(self.device)[:, None]  # (g, 1, n)
                _, c = self.decoder.quantize(self.encoder(x))  # (q, g, t)
                for i, ci in zip(group, c.permute(1, 2, 0)):  # (t, q) each
                    codes[i] = ci.to(wavs[i].device)
        return codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (b, t, q'), q' <= q stages (the first q') -> waveform (b, t * hop) float32, on the codes' device."""
        if codes.dim() != 3 or not 1 <= codes.shape[-1] <= self.num_quantizers:
            raise ValueError(f"decode expects codes (b, t, q) with 1 <= q <= {self.num_quantizers}, got shape {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"decode: code ids must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        emb = self.decoder.vq2emb(codes.to(self.device).long().permute(2, 0, 1))  # (b, c, t)
        return self.decoder(emb)[:, 0].to(codes.device)
