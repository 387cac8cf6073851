"""Lip-to-speech condition: visual features at 25 fps brought to the 50 Hz SSL-token rate."""

from __future__ import annotations

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
