"""Semantic tokens: 16 kHz speech -> w2v-BERT 2.0 layer-17 features -> normalisation -> RepCodec codes.

ARCHITECTURE.md §4. Rates and counts (§0): 160-dim stacked fbank frames at 50 Hz, T_s = ceil(F / 2)
with F = 1 + floor((n - 400) / 160) fbank frames; codes in [0, 8192).

`W2vBertFeatureExtractor.features` gives the normalised features (Metis's `finetune_cond` for se, tse
and vc); `SemanticTokenizer.encode` quantises them. Both run batched: the feature extractor pads and
w2v-BERT honours the attention mask, so a batch gives the same features as one utterance at a time.
RepCodec has no mask (its convolutions would see the padding), so it runs on groups of equal length.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from metis.models.semantic_codec import RepCodec
from metis.tokenizers.base import file_sha256

W2V_BERT_ID = "facebook/w2v-bert-2.0"
MIN_SAMPLES_16K = 400  # one 25 ms fbank window


def semantic_num_frames(n16: int) -> int:
    """Semantic frames for n16 samples at 16 kHz: ceil(F / 2), F = 1 + floor((n16 - 400) / 160)."""
    if n16 < MIN_SAMPLES_16K:
        raise ValueError(f"{n16} samples at 16 kHz is shorter than one 400-sample fbank window")
    return math.ceil((1 + (n16 - MIN_SAMPLES_16K) // 160) / 2)


def load_safetensors_into(module: nn.Module, path: str | Path, what: str) -> None:
    """Strictly load a safetensors state dict, naming the file and the offending keys on mismatch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weights file {path} does not exist")
    state = load_file(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} != model {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{what}: {path} does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shape mismatches {shapes[:5]}"
        )
    module.load_state_dict(state, strict=True)


def load_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) from the w2v-BERT stats: `.safetensors` (mean, var[, std]) or the reference `.pt` dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"w2v-BERT stats file {path} does not exist")
    if path.suffix == ".safetensors":
        stats = load_file(path)
    else:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("mean", "var"):
        if key not in stats:
            raise KeyError(f"w2v-BERT stats file {path}: missing key {key!r} (has {sorted(stats)})")
    mean, var = stats["mean"].float().flatten(), stats["var"].float().flatten()
    if mean.shape != var.shape:
        raise ValueError(f"w2v-BERT stats file {path}: mean {tuple(mean.shape)} and var {tuple(var.shape)} differ")
    return mean, var.sqrt()  # the reference divides by sqrt(var)


def _as_mono(wavs: list[torch.Tensor], sr: int, min_samples: int) -> list[torch.Tensor]:
    if isinstance(wavs, torch.Tensor):
        raise TypeError("pass a list of waveforms (n,), not one tensor")
    out = []
    for i, w in enumerate(wavs):
        w = torch.as_tensor(w)
        if w.dim() != 1:
            raise ValueError(f"waveform {i}: expected a mono (n,) tensor at {sr} Hz, got shape {tuple(w.shape)}")
        if w.numel() < min_samples:
            raise ValueError(f"waveform {i}: {w.numel()} samples at {sr} Hz, need at least {min_samples}")
        out.append(w.float())
    return out


class W2vBertFeatureExtractor:
    """Normalised w2v-BERT 2.0 hidden states: wav (n,) at 16 kHz -> (T_s, hidden).

    Args:
        model: hub id or local folder with the w2v-BERT model and its preprocessor config.
        stats: the normalisation stats file (mean, var).
        layer: hidden_states index (17 = output of the 17th conformer block; 0 = feature projection).
        device, dtype: where and in what precision w2v-BERT runs; features come back as float32.
        batch_size: utterances per w2v-BERT forward.
    """

    sample_rate = 16000
    frame_rate = 50.0

    def __init__(
        self,
        model: str | Path = W2V_BERT_ID,
        stats: str | Path = "wav2vec2bert_stats.safetensors",
        *,
        layer: int = 17,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
    ):
        from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel  # heavy import, only here

        self.model_id = str(model)
        self.stats_path = Path(stats)
        self.layer = layer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.processor = SeamlessM4TFeatureExtractor.from_pretrained(model)
        w2v = Wav2Vec2BertModel.from_pretrained(model).to(dtype)
        n_layers = len(w2v.encoder.layers)
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer={layer}: {model} has hidden_states 0..{n_layers}")
        # hidden_states[layer] never depends on the later blocks: drop them (24 -> 17 blocks released)
        w2v.encoder.layers = w2v.encoder.layers[:layer]
        w2v.config.num_hidden_layers = layer
        self.model = w2v.eval().requires_grad_(False).to(self.device)
        mean, std = load_stats(self.stats_path)
        if mean.numel() != w2v.config.hidden_size:
            raise ValueError(f"w2v-BERT stats file {self.stats_path}: {mean.numel()} channels, model {model} has {w2v.config.hidden_size}")
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.hidden_size = w2v.config.hidden_size

    def identity(self) -> dict[str, str]:
        return {"w2v_bert": self.model_id, "layer": str(self.layer), "stats_sha256": file_sha256(self.stats_path)}

    @torch.no_grad()
    def features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> normalised features (T_s_i, hidden) float32, on the inputs' device."""
        wavs = _as_mono(wavs, self.sample_rate, MIN_SAMPLES_16K)
        out_device = wavs[0].device if wavs else self.device
        feats = []
        for start in range(0, len(wavs), self.batch_size):
            chunk = wavs[start : start + self.batch_size]
            inputs = self.processor(
                [w.cpu().numpy() for w in chunk], sampling_rate=self.sample_rate, padding=True, return_attention_mask=True, return_tensors="pt"
            )
            x = inputs["input_features"].to(self.device, self.model.dtype)  # (b, t, 160)
            mask = inputs["attention_mask"].to(self.device)  # (b, t); 0 also on the odd-F last frame
            h = self.model(x, attention_mask=mask, output_hidden_states=True).hidden_states[self.layer].float()
            h = (h - self.mean) / self.std  # (b, t, hidden)
            for w, hi in zip(chunk, h):
                # the mask is 0 on an odd-F last frame, which the reference still keeps: count, don't sum
                feats.append(hi[: semantic_num_frames(w.numel())].to(out_device))
        return feats


class SemanticTokenizer:
    """SpeechTokenizer for MaskGCT/Metis semantic tokens (w2v-BERT 2.0 layer 17 + RepCodec).

    Args:
        w2v_bert: hub id or local folder of w2v-BERT 2.0 (`from_pretrained`).
        stats: the w2v-BERT normalisation stats file.
        codec: RepCodec weights (`semantic_codec/model.safetensors`).
        layer: w2v-BERT hidden_states index.
        codec_config: RepCodec constructor arguments (default: the released codec).
        device, dtype, batch_size: see W2vBertFeatureExtractor.
    """

    name = "w2v-bert-2.0+repcodec"
    sample_rate = 16000
    frame_rate = 50.0

    def __init__(
        self,
        w2v_bert: str | Path = W2V_BERT_ID,
        stats: str | Path = "wav2vec2bert_stats.safetensors",
        codec: str | Path = "semantic_codec/model.safetensors",
        *,
        layer: int = 17,
        codec_config: dict | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
    ):
        self.extractor = W2vBertFeatureExtractor(w2v_bert, stats, layer=layer, device=device, dtype=dtype, batch_size=batch_size)
        self.codec_path = Path(codec)
        self.codec = RepCodec(**(codec_config or {}))
        if self.codec.hidden_size != self.extractor.hidden_size:
            raise ValueError(f"RepCodec hidden_size {self.codec.hidden_size} != w2v-BERT hidden size {self.extractor.hidden_size}")
        load_safetensors_into(self.codec, self.codec_path, "semantic codec")
        self.codec.eval().requires_grad_(False).to(self.extractor.device)
        self.codebook_size = self.codec.codebook_size
        self._codec_sha256: str | None = None

    def identity(self) -> dict[str, str]:
        if self._codec_sha256 is None:  # hashing 177 MB once is enough
            self._codec_sha256 = file_sha256(self.codec_path)
        return {"name": self.name, **self.extractor.identity(), "codec_sha256": self._codec_sha256}

    def features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> normalised w2v-BERT features (T_s_i, 1024)."""
        return self.extractor.features(wavs)

    @torch.no_grad()
    def quantize(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Normalised features (t_i, hidden) -> codes (t_i,) int64, on the inputs' device."""
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, f in enumerate(feats):
            by_len[f.shape[0]].append(i)
        codes: list[torch.Tensor | None] = [None] * len(feats)
        dev = self.extractor.device
        for idx in by_len.values():
            for start in range(0, len(idx), self.extractor.batch_size):
                group = idx[start : start + self.extractor.batch_size]
                c, _ = self.codec.quantize(torch.stack([feats[i] for i in group]).to(dev))  # (g, t)
                for i, ci in zip(group, c):
                    codes[i] = ci.to(feats[i].device)
        return codes

    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> semantic codes (T_s_i,) int64 in [0, codebook_size)."""
        return self.quantize(self.features(wavs))
