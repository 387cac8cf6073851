import pytest
import torch

from metis.conditions import band_limit, clip, peak_threshold
from tests.conditions.conftest import SR, gen


@pytest.mark.parametrize("cutoff", [2000, 3000, 4000, 6000])
def test_band_limit_removes_energy_above_cutoff(cutoff):
    x = torch.randn(SR // 2, generator=gen(0))  # white: energy everywhere
    y = band_limit(x, cutoff, SR)
    assert y.shape == x.shape
    win = torch.hann_window(len(y))
    p = torch.fft.rfft(y * win).abs() ** 2
    f = torch.fft.rfftfreq(len(y), 1 / SR)
    assert float(p[f > cutoff].sum() / p.sum()) < 1e-6
    # the pass band (below 90% of the cutoff) is kept
    p_in = torch.fft.rfft(x * win).abs() ** 2
    keep = f < 0.9 * cutoff
    assert float(p[keep].sum() / p_in[keep].sum()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("cutoff", [0, -5, 8000, 9000])
def test_band_limit_rejects_cutoff_outside_nyquist_band(cutoff):
    with pytest.raises(ValueError, match="Nyquist"):
        band_limit(torch.randn(100, generator=gen(0)), cutoff, SR)


def test_clip_clips_at_the_level():
    x = torch.randn(4000, generator=gen(1))
    thr = peak_threshold(x, -6.0)
    assert thr == pytest.approx(float(x.abs().max()) * 10 ** (-6 / 20))
    y = clip(x, thr)
    assert float(y.abs().max()) == pytest.approx(thr)
    inside = x.abs() < thr
    assert torch.equal(y[inside], x[inside])
    assert torch.allclose(y[~inside], x[~inside].sign() * thr)
    with pytest.raises(ValueError, match="threshold"):
        clip(x, 0.0)
