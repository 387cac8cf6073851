"""Semantic tokens: 16 kHz speech -> w2v-BERT 2.0 layer-17 features -> normalisation -> RepCodec codes.

docs/reference.md §4. Rates and counts (docs/reference.md §0): 160-dim stacked fbank frames at 50 Hz, T_s = ceil(F / 2)
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
from torch import nn

from metis.checkpoints.io import load_into, read_safetensors
from metis.checkpoints.sources import resolve_source
from metis.models.semantic_codec import RepCodec
from metis.tokenizers.base import file_sha256

W2V_BERT_ID = "facebook/w2v-bert-2.0"
MASKGCT_REPO = "amphion/MaskGCT"
REPCODEC_FILE = "semantic_codec/model.safetensors"
MIN_SAMPLES_16K = 400  # one 25 ms fbank window
# The released normalisation stats (Amphion's wav2vec2bert_stats.pt as safetensors; MIT), shipped with the package.
DEFAULT_STATS = Path(__file__).with_name("wav2vec2bert_stats.safetensors")


def semantic_num_frames(n16: int) -> int:
    """Semantic frames for n16 samples at 16 kHz: ceil(F / 2), F = 1 + floor((n16 - 400) / 160)."""
    if n16 < MIN_SAMPLES_16K:
        raise ValueError(f"{n16} samples at 16 kHz is shorter than one 400-sample fbank window")
    return math.ceil((1 + (n16 - MIN_SAMPLES_16K) // 160) / 2)


def load_codec_weights(module: nn.Module, source: str | Path, filename: str) -> Path:
    """Resolve `filename` (a path inside amphion/MaskGCT) from a file, a folder laid out like that repo,
    or a Hub repo id, and load it strictly (errors name the file and the offending keys). -> the file."""
    path = resolve_source(source, filename).path
    load_into(module, read_safetensors(path), source=str(path))
    return path


def load_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) from the w2v-BERT stats: `.safetensors` (mean, var[, std]) or the reference `.pt` dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"w2v-BERT stats file {path} does not exist")
    if path.suffix == ".safetensors":
        stats = read_safetensors(path)
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
        stats: the normalisation stats file (mean, var); None gives only `raw_features` (e.g. to
            compute new stats with `python -m metis.data stats`).
        layer: hidden_states index (17 = output of the 17th conformer block; 0 = feature projection).
        device, dtype: where and in what precision w2v-BERT runs; features come back as float32.
        batch_size: utterances per w2v-BERT forward.
    """

    sample_rate = 16000
    frame_rate = 50.0

    def __init__(
        self,
        model: str | Path = W2V_BERT_ID,
        stats: str | Path | None = None,
        *,
        layer: int = 17,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
    ):
        from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel  # heavy import, only here

        self.model_id = str(model)
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
        self.hidden_size = w2v.config.hidden_size
        self.stats_path = None if stats is None else Path(stats)
        self.mean = self.std = None
        if self.stats_path is not None:
            mean, std = load_stats(self.stats_path)
            if mean.numel() != self.hidden_size:
                raise ValueError(f"w2v-BERT stats file {self.stats_path}: {mean.numel()} channels, model {model} has {self.hidden_size}")
            self.mean, self.std = mean.to(self.device), std.to(self.device)
        self._stats_sha256 = None if stats is None else file_sha256(self.stats_path)

    def to(self, device: str | torch.device) -> "W2vBertFeatureExtractor":
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.mean is not None:
            self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        return self

    def identity(self) -> dict[str, str]:
        return {"w2v_bert": self.model_id, "layer": str(self.layer), "stats_sha256": self._stats_sha256 or "none (raw features)"}

    @torch.no_grad()
    def raw_features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> un-normalised hidden_states[layer] (T_s_i, hidden) float32,
        on the inputs' device."""
        wavs = _as_mono(wavs, self.sample_rate, MIN_SAMPLES_16K)
        feats = []
        for start in range(0, len(wavs), self.batch_size):
            chunk = wavs[start : start + self.batch_size]
            inputs = self.processor(
                [w.cpu().numpy() for w in chunk], sampling_rate=self.sample_rate, padding=True, return_attention_mask=True, return_tensors="pt"
            )
            x = inputs["input_features"].to(self.device, self.model.dtype)  # (b, t, 160)
            mask = inputs["attention_mask"].to(self.device)  # (b, t); 0 also on the odd-F last frame
            h = self.model(x, attention_mask=mask, output_hidden_states=True).hidden_states[self.layer].float()
            for w, hi in zip(chunk, h):
                # the mask is 0 on an odd-F last frame, which the reference still keeps: count, don't sum
                feats.append(hi[: semantic_num_frames(w.numel())].to(w.device))
        return feats

    def _require_stats(self) -> None:
        if self.mean is None:
            raise ValueError("this w2v-BERT feature extractor has no stats file: pass stats=... for normalised features")

    def normalize(self, feat: torch.Tensor) -> torch.Tensor:
        """(..., hidden) raw features -> (feat - mean) / sqrt(var)."""
        self._require_stats()
        return (feat - self.mean.to(feat.device)) / self.std.to(feat.device)

    def features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> normalised features (T_s_i, hidden) float32, on the inputs' device."""
        self._require_stats()  # before any work
        return [self.normalize(f) for f in self.raw_features(wavs)]


class SemanticTokenizer:
    """SpeechTokenizer for MaskGCT/Metis semantic tokens (w2v-BERT 2.0 layer 17 + RepCodec).

    Args:
        w2v_bert: hub id or local folder of w2v-BERT 2.0 (`from_pretrained`).
        stats: the w2v-BERT normalisation stats file; default: the released stats shipped with the
            package; None: only `raw_features` work.
        codec: RepCodec weights: the file itself, a folder laid out like amphion/MaskGCT
            (`semantic_codec/model.safetensors` inside), or a Hub repo id.
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
        stats: str | Path | None = DEFAULT_STATS,
        codec: str | Path = MASKGCT_REPO,
        *,
        layer: int = 17,
        codec_config: dict | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
    ):
        self.extractor = W2vBertFeatureExtractor(w2v_bert, stats, layer=layer, device=device, dtype=dtype, batch_size=batch_size)
        self.codec = RepCodec(**(codec_config or {}))
        if self.codec.hidden_size != self.extractor.hidden_size:
            raise ValueError(f"RepCodec hidden_size {self.codec.hidden_size} != w2v-BERT hidden size {self.extractor.hidden_size}")
        self.codec_path = load_codec_weights(self.codec, codec, REPCODEC_FILE)
        self.codec.eval().requires_grad_(False).to(self.extractor.device)
        self.codebook_size = self.codec.codebook_size
        self._codec_sha256: str | None = None

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    def to(self, device: str | torch.device) -> "SemanticTokenizer":
        self.extractor.to(device)
        self.codec.to(self.extractor.device)
        return self

    def identity(self) -> dict[str, str]:
        if self._codec_sha256 is None:  # hashing 177 MB once is enough
            self._codec_sha256 = file_sha256(self.codec_path)
        return {"name": self.name, **self.extractor.identity(), "codec_sha256": self._codec_sha256}

    def raw_features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> un-normalised w2v-BERT features (T_s_i, hidden)."""
        return self.extractor.raw_features(wavs)

    def features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> normalised w2v-BERT features (T_s_i, hidden): finetune_cond."""
        return self.extractor.features(wavs)

    @torch.no_grad()
    def quantize(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Normalised features (t_i, hidden) -> codes (t_i,) int64, on the inputs' device."""
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, f in enumerate(feats):
            by_len[f.shape[0]].append(i)
        codes: list[torch.Tensor | None] = [None] * len(feats)
        for idx in by_len.values():
            for start in range(0, len(idx), self.extractor.batch_size):
                group = idx[start : start + self.extractor.batch_size]
                c, _ = self.codec.quantize(torch.stack([feats[i] for i in group]).to(self.device))  # (g, t)
                for i, ci in zip(group, c):
                    codes[i] = ci.to(feats[i].device)
        return codes

    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mono waveforms (n_i,) at 16 kHz -> semantic codes (T_s_i,) int64 in [0, codebook_size)."""
        return self.quantize(self.features(wavs))
