"""Audio and feature files for inference: read any rate / channel count as mono at the rate a model
needs (16 kHz semantic path, 24 kHz acoustic path), write 24 kHz wavs, read l2s visual features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OUTPUT_SAMPLE_RATE = 24000


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Read `path` (any format soundfile reads) as mono float32 (n,) at `sample_rate` (channels averaged)."""
    import soundfile as sf
    import torchaudio.functional as AF

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
    except Exception as e:  # soundfile's errors do not always name the file
        raise ValueError(f"cannot read audio file {path}: {e}") from e
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty")
    wav = torch.from_numpy(data.mean(axis=1))
    if sr != sample_rate:
        wav = AF.resample(wav, sr, sample_rate)
    return wav.contiguous()


def save_audio(path: str | Path, wav: torch.Tensor, sample_rate: int = OUTPUT_SAMPLE_RATE) -> Path:
    """Write a mono waveform (n,) as 16-bit PCM wav (folders created); samples are clipped to [-1, 1]."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = wav.detach().float().cpu().clamp(-1, 1).numpy()
    sf.write(str(path), data, sample_rate, subtype="PCM_16")
    return path


def load_video_features(path: str | Path) -> torch.Tensor:
    """l2s visual features (T_v, c) at 25 Hz from .npy or .pt/.pth (a tensor; loaded weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video features file {path} does not exist")
    if path.suffix == ".npy":
        feats = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix in (".pt", ".pth"):
        feats = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(feats, torch.Tensor):
            raise ValueError(f"video features file {path} holds a {type(feats).__name__}, expected a tensor (T_v, c)")
    else:
        raise ValueError(f"video features file {path}: expected .npy or .pt, got {path.suffix!r}")
    if feats.dim() == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise ValueError(f"video features file {path}: expected (T_v, c), got shape {tuple(feats.shape)}")
    return feats.float()


def upsample_video_features(feats: torch.Tensor) -> torch.Tensor:
    """(T_v, c) at 25 Hz -> (2 T_v, c) at 50 Hz, linear interpolation with align_corners=False (docs/reference.md §6 l2s)."""
    return torch.nn.functional.interpolate(feats.T[None], scale_factor=2, mode="linear", align_corners=False)[0].T.contiguous()
