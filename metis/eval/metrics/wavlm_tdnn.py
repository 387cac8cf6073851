"""WavLM + ECAPA-TDNN speaker verification from a UniSpeech checkpoint (``wavlm_large_finetune.pth``).

This is the speaker model behind the papers' SIM-O (docs/reference.md §10.8, SeedTTS-eval). The checkpoint holds a
``model`` state dict with the WavLM upstream under ``feature_extract.model.`` (fairseq WavLM names) and
the ECAPA-TDNN head at the top level. The upstream is rebuilt as a ``transformers`` ``WavLMModel`` (names
mapped, sizes read from the tensors); the head is written here with the checkpoint's attribute names,
which are a contract for ``load_state_dict``.

Embedding: waveform at 16 kHz, normalised to zero mean / unit variance (WavLM ``normalize``), every hidden
state of WavLM (input of each layer plus the final output) mixed with softmax(``feature_weight``),
instance norm over time, ECAPA-TDNN (3 SE-Res2 blocks, attentive statistics pooling) -> 256-d.
Axes: b batch, c channels, t frames, l hidden-state index.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Conv1dReluBn(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x):  # (b, c, t)
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Res2Net: split channels into ``scale`` groups; each group after the first adds the previous
    group's output before its own dilated conv; the last group passes through unchanged."""

    def __init__(self, channels: int, kernel_size: int, padding: int, dilation: int, scale: int):
        super().__init__()
        self.width = channels // scale
        n = scale - 1 if scale > 1 else 1
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, padding=padding, dilation=dilation)
                                   for _ in range(n))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(n))
        self.scale = scale

    def forward(self, x):
        parts = torch.split(x, self.width, dim=1)
        out, prev = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            sp = parts[i] if prev is None else prev + parts[i]
            prev = bn(F.relu(conv(sp)))
            out.append(prev)
        if self.scale > 1:
            out.append(parts[-1])
        return torch.cat(out, dim=1)


class SE_Connect(nn.Module):  # noqa: N801 (checkpoint name)
    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x):  # (b, c, t): channel gates from the time average
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * gate.unsqueeze(2)


class SE_Res2Block(nn.Module):  # noqa: N801 (checkpoint name)
    def __init__(self, channels: int, kernel_size: int, padding: int, dilation: int, scale: int = 8):
        super().__init__()
        self.Conv1dReluBn1 = Conv1dReluBn(channels, channels)
        self.Res2Conv1dReluBn = Res2Conv1dReluBn(channels, kernel_size, padding, dilation, scale)
        self.Conv1dReluBn2 = Conv1dReluBn(channels, channels)
        self.SE_Connect = SE_Connect(channels)

    def forward(self, x):
        return x + self.SE_Connect(self.Conv1dReluBn2(self.Res2Conv1dReluBn(self.Conv1dReluBn1(x))))


class AttentiveStatsPool(nn.Module):
    def __init__(self, channels: int, attention: int = 128):
        super().__init__()
        self.linear1 = nn.Conv1d(channels, attention, kernel_size=1)
        self.linear2 = nn.Conv1d(attention, channels, kernel_size=1)

    def forward(self, x):  # (b, c, t) -> (b, 2c): attention-weighted mean and standard deviation
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(x))), dim=2)
        mean = (alpha * x).sum(dim=2)
        var = (alpha * x * x).sum(dim=2) - mean * mean
        return torch.cat([mean, var.clamp(min=1e-9).sqrt()], dim=1)


class EcapaHead(nn.Module):
    """ECAPA-TDNN over a weighted sum of SSL hidden states (UniSpeech ``ECAPA_TDNN_SMALL``)."""

    def __init__(self, feat_dim: int, n_states: int, channels: int = 512, emb_dim: int = 256):
        super().__init__()
        self.feature_weight = nn.Parameter(torch.zeros(n_states))
        self.instance_norm = nn.InstanceNorm1d(feat_dim)
        self.layer1 = Conv1dReluBn(feat_dim, channels, kernel_size=5, padding=2)
        self.layer2 = SE_Res2Block(channels, 3, padding=2, dilation=2)
        self.layer3 = SE_Res2Block(channels, 3, padding=3, dilation=3)
        self.layer4 = SE_Res2Block(channels, 3, padding=4, dilation=4)
        self.conv = nn.Conv1d(channels * 3, 1536, kernel_size=1)
        self.pooling = AttentiveStatsPool(1536)
        self.bn = nn.BatchNorm1d(1536 * 2)
        self.linear = nn.Linear(1536 * 2, emb_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states: (l, b, t, c) hidden states -> (b, emb_dim) embedding."""
        w = torch.softmax(self.feature_weight, dim=0)[:, None, None, None]
        x = (w * states).sum(dim=0).transpose(1, 2) + 1e-6  # (b, c, t)
        x = self.instance_norm(x)
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        x = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        return self.linear(self.bn(self.pooling(x)))


# fairseq WavLM parameter names -> transformers WavLMModel names ({} = layer index)
_LAYER_MAP = {
    "self_attn.k_proj": "attention.k_proj", "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj", "self_attn.out_proj": "attention.out_proj",
    "self_attn.grep_linear": "attention.gru_rel_pos_linear", "self_attn.grep_a": "attention.gru_rel_pos_const",
    "self_attn.relative_attention_bias": "attention.rel_attn_embed", "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense", "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_TOP_MAP = {"post_extract_proj": "feature_projection.projection", "layer_norm": "feature_projection.layer_norm",
            "encoder.layer_norm": "encoder.layer_norm"}
_IGNORED = ("mask_emb", "label_embs_concat", "final_proj", "project_q", "quantizer")


def fairseq_to_hf(sd: dict[str, torch.Tensor], *, weight_norm_parametrized: bool = True) -> dict[str, torch.Tensor]:
    """Rename a fairseq WavLM state dict (no prefix) to ``WavLMModel`` names; unknown keys raise."""
    out = {}
    for name, v in sd.items():
        if name.startswith(_IGNORED):
            continue
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)", name)
        if m:
            part = "conv" if m.group(2) == "0" else "layer_norm"
            out[f"feature_extractor.conv_layers.{m.group(1)}.{part}.{m.group(3)}"] = v
            continue
        m = re.fullmatch(r"encoder\.pos_conv\.0\.(weight_g|weight_v|bias)", name)
        if m:
            kind = m.group(1)
            if kind != "bias" and weight_norm_parametrized:
                kind = {"weight_g": "parametrizations.weight.original0",
                        "weight_v": "parametrizations.weight.original1"}[kind]
            out[f"encoder.pos_conv_embed.conv.{kind}"] = v
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+?)(?:\.(weight|bias))?", name)
        if m and m.group(2) in _LAYER_MAP:
            suffix = f".{m.group(3)}" if m.group(3) else ""
            out[f"encoder.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}{suffix}"] = v
            continue
        m = re.fullmatch(r"(.+)\.(weight|bias)", name)
        if m and m.group(1) in _TOP_MAP:
            out[f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"] = v
            continue
        raise KeyError(f"unexpected WavLM parameter '{name}' in the UniSpeech checkpoint")
    return out


def wavlm_config_from(sd: dict[str, torch.Tensor]):
    """A ``WavLMConfig`` whose sizes are read from the fairseq tensors (WavLM Base+ or Large)."""
    from transformers import WavLMConfig

    n_layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    n_conv = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("feature_extractor.conv_layers."))
    convs = [sd[f"feature_extractor.conv_layers.{i}.0.weight"] for i in range(n_conv)]
    hidden = sd["post_extract_proj.weight"].shape[0]
    pos = sd["encoder.pos_conv.0.weight_v"]
    layer_norm_convs = "feature_extractor.conv_layers.1.2.1.weight" in sd
    strides = (5,) + (2,) * (n_conv - 1)  # the wav2vec 2.0 / WavLM feature encoder: 320x downsampling
    return WavLMConfig(
        hidden_size=hidden, num_hidden_layers=n_layers,
        num_attention_heads=sd["encoder.layers.0.self_attn.grep_a"].shape[1],
        intermediate_size=sd["encoder.layers.0.fc1.weight"].shape[0],
        conv_dim=tuple(c.shape[0] for c in convs), conv_kernel=tuple(c.shape[2] for c in convs),
        conv_stride=strides[:n_conv], conv_bias="feature_extractor.conv_layers.0.0.bias" in sd,
        feat_extract_norm="layer" if layer_norm_convs else "group", do_stable_layer_norm=layer_norm_convs,
        num_conv_pos_embeddings=pos.shape[2], num_conv_pos_embedding_groups=hidden // pos.shape[1],
        num_buckets=sd["encoder.layers.0.self_attn.relative_attention_bias.weight"].shape[0],
        max_bucket_distance=800, apply_spec_augment=False, mask_time_prob=0.0, layerdrop=0.0,
    )


def unispeech_state_dict(path: str | Path) -> dict | None:
    """The `model` tensors of a UniSpeech checkpoint, never unpickling Python objects.

    `.safetensors` (what `python -m metis.checkpoints.convert FILE.pth OUT --trust-pickle` writes)
    is read as is; a `.pth` only when it holds nothing but tensors and containers (torch's
    weights-only unpickler). The released `.pth` files also pickle other objects: they are refused
    with the one-time conversion command, because unpickling a file can run any code in it.
    """
    from pickle import UnpicklingError

    from metis.checkpoints.io import read_safetensors

    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except UnpicklingError as exn:
        raise ValueError(
            f"{path} pickles Python objects besides tensors and is not loaded (unpickling can run code; "
            f"{str(exn).splitlines()[0]}). If you trust the file, convert it once: python -m metis.checkpoints.convert "
            f"{path} <out_dir> --trust-pickle, then pass <out_dir>/{path.stem}.safetensors") from None
    except (RuntimeError, EOFError, OSError) as exn:
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(exn).__name__}: {exn})") from None
    return ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None


class WavLMTDNN(nn.Module):
    def __init__(self, wavlm: nn.Module, head: EcapaHead):
        super().__init__()
        self.wavlm = wavlm
        self.head = head

    @classmethod
    def from_unispeech(cls, path: str | Path) -> WavLMTDNN:
        from transformers import WavLMModel

        sd = unispeech_state_dict(path)
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a dict with a 'model' state dict (UniSpeech speaker verification)")
        anchor = [k for k in sd if k.endswith("post_extract_proj.weight")]
        if not anchor or "feature_weight" not in sd:
            raise ValueError(f"{path}: no WavLM upstream ('...post_extract_proj.weight') or no 'feature_weight': "
                             "not a UniSpeech WavLM ECAPA-TDNN checkpoint")
        prefix = anchor[0].removesuffix("post_extract_proj.weight")
        upstream = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        wavlm = WavLMModel(wavlm_config_from(upstream))
        parametrized = any("parametrizations" in k for k in wavlm.state_dict())
        missing, unexpected = wavlm.load_state_dict(fairseq_to_hf(upstream, weight_norm_parametrized=parametrized),
                                                     strict=False)
        missing = [k for k in missing if k != "masked_spec_embed"]
        if missing or unexpected:
            raise ValueError(f"{path}: WavLM weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        head_sd = {k: v for k, v in sd.items() if not k.startswith(prefix.split(".")[0] + ".")}
        head = EcapaHead(feat_dim=wavlm.config.hidden_size, n_states=sd["feature_weight"].shape[0],
                         emb_dim=sd["linear.weight"].shape[0])
        missing, unexpected = head.load_state_dict(head_sd, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"{path}: ECAPA-TDNN head weights do not fit: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return cls(wavlm, head).eval()

    @torch.inference_mode()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: (b, time) at 16 kHz -> (b, emb_dim)."""
        wav = F.layer_norm(wav, wav.shape[-1:])
        # s3prl's WavLM hidden states: the input of every encoder layer, then the encoder output
        states: list[torch.Tensor] = []
        hooks = [layer.register_forward_pre_hook(lambda _m, args: states.append(args[0]))
                 for layer in self.wavlm.encoder.layers]
        try:
            states.append(self.wavlm(wav).last_hidden_state)  # l x (b, t, c)
        finally:
            for h in hooks:
                h.remove()
        if len(states) != self.head.feature_weight.shape[0]:
            raise ValueError(f"WavLM gives {len(states)} hidden states, the head expects "
                             f"{self.head.feature_weight.shape[0]}")
        return self.head(torch.stack(states, dim=0))
