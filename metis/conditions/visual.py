"""Lip-to-speech condition: visual features at 25 fps brought to the 50 Hz SSL-token rate.

`audio_stand_in` is the offline demo's substitute for lip features (the demo corpus has no video):
a 25 fps log-mel stream computed from the speech itself. It is NOT lip video and carries the spoken
content far more directly than lips do; the real task reads 768-d AV-HuBERT-style features of the
speaker's lip video (`load_video_features`). Write one for inference with

    python -m metis.conditions.visual speech.wav stand_in.npy      # then infer.py task=l2s video_features=stand_in.npy
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def load_video_features(path: str | os.PathLike) -> torch.Tensor:
    """l2s visual features (t_v, c) at 25 fps from .npy or .pt/.pth (a tensor; loaded weights-only)."""
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


def upsample_visual(vis: torch.Tensor, prompt_frames: int = 0) -> torch.Tensor:
    """(t_v, c) at 25 fps -> (prompt_frames + 2·t_v, c) at 50 Hz: linear interpolation to exactly
    2·t_v frames (align_corners=False, as the released Metis L2S code), preceded by `prompt_frames`
    zero rows (the speech-prompt span carries no visual condition).

    Raises:
        ValueError: vis not 2-D, empty or non-finite; prompt_frames < 0.
    """
    if not isinstance(vis, torch.Tensor) or vis.dim() != 2:
        raise ValueError(f"upsample_visual: vis must be a (t_v, c) tensor, got "
                         f"{tuple(vis.shape) if isinstance(vis, torch.Tensor) else type(vis).__name__}")
    if vis.shape[0] == 0 or vis.shape[1] == 0:
        raise ValueError(f"upsample_visual: empty visual features, shape {tuple(vis.shape)}")
    if prompt_frames < 0:
        raise ValueError(f"upsample_visual: prompt_frames must be >= 0, got {prompt_frames}")
    x = vis.float()
    if not torch.isfinite(x).all():
        raise ValueError("upsample_visual: visual features contain NaN/inf")
    up = F.interpolate(x.t()[None], size=2 * x.shape[0], mode="linear", align_corners=False)[0].t()  # (2·t_v, c)
    return torch.cat([up.new_zeros(prompt_frames, x.shape[1]), up], dim=0)


STAND_IN_DIM = 80  # log-mel bins of the demo's stand-in visual stream
_STAND_IN_HOP = 640  # 16 kHz samples per 25 fps frame


def audio_stand_in(wav16: torch.Tensor, n_mels: int = STAND_IN_DIM) -> torch.Tensor:
    """(n,) speech at 16 kHz -> (max(1, n // 640), n_mels) frames at 25 fps: log-mel (50 ms window,
    40 ms hop), normalised over the utterance (zero mean, unit variance per bin).

    The offline demo's stand-in for lip features (see the module docstring): derived from the audio,
    so it is not lip video and an L2S model trained on it is no evidence about lip reading.
    """
    import torchaudio

    if wav16.dim() != 1 or wav16.numel() == 0:
        raise ValueError(f"audio_stand_in: expected a non-empty (n,) waveform, got shape {tuple(wav16.shape)}")
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, win_length=800, hop_length=_STAND_IN_HOP, n_mels=n_mels,
                                               center=True)(wav16.float())  # (n_mels, n // 640 + 1)
    feats = mel.clamp(min=1e-6).log().t()[: max(1, wav16.numel() // _STAND_IN_HOP)]
    return (feats - feats.mean(0)) / feats.std(0, unbiased=False).clamp(min=1e-3)


def main(argv: list[str] | None = None) -> int:
    from metis.atomic import write_bytes
    from metis.audio import load_tensor
    from metis.cli import user_errors
    from metis.data.shards import npy_bytes

    p = argparse.ArgumentParser(description="Write the offline demo's stand-in visual features (25 fps log-mel of a "
                                "speech file; NOT lip video) as .npy for infer.py task=l2s video_features=...")
    p.add_argument("speech", help="speech file (any rate; resampled to 16 kHz)")
    p.add_argument("out", help="output .npy, (T_v, %d) float32" % STAND_IN_DIM)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    with user_errors("python -m metis.conditions.visual", debug=args.debug):
        feats = audio_stand_in(load_tensor(args.speech, 16000)).numpy().astype(np.float32)
        write_bytes(args.out, npy_bytes(feats))
    print(f"{args.out}: {feats.shape[0]} frames x {feats.shape[1]} (stand-in visual stream, 25 fps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
