import pytest
import torch
import torch.nn.functional as F

from metis.conditions import upsample_visual
from tests.conditions.conftest import gen


@pytest.mark.parametrize("t_v,prompt", [(1, 0), (7, 0), (25, 13)])
def test_upsample_visual_length_zeros_and_interpolation(t_v, prompt):
    vis = torch.randn(t_v, 768, generator=gen(t_v))
    out = upsample_visual(vis, prompt_frames=prompt)
    assert out.shape == (prompt + 2 * t_v, 768)
    assert torch.count_nonzero(out[:prompt]) == 0
    ref = F.interpolate(vis.t()[None], scale_factor=2, mode="linear", align_corners=False)[0].t()
    assert torch.allclose(out[prompt:], ref, atol=1e-6)
    # independently: with align_corners=False, output frame j samples input position (j + 0.5)/2 - 0.5
    pos = ((torch.arange(2 * t_v) + 0.5) / 2 - 0.5).clamp(0, t_v - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=t_v - 1)
    w = (pos - i0)[:, None]
    assert torch.allclose(out[prompt:], vis[i0] * (1 - w) + vis[i1] * w, atol=1e-6)


def test_upsample_visual_bad_input():
    with pytest.raises(ValueError, match="empty"):
        upsample_visual(torch.zeros(0, 768))
    with pytest.raises(ValueError, match=r"\(t_v, c\)"):
        upsample_visual(torch.zeros(5))
    with pytest.raises(ValueError, match="prompt_frames"):
        upsample_visual(torch.zeros(5, 3), prompt_frames=-1)
