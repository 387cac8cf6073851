"""Lip-to-speech condition: visual features at 25 fps brought to the 50 Hz SSL-token rate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
