import numpy as np
import pytest

from metis.audio import resample
from metis.eval.metrics import DNSMOS
from metis.eval.metrics.dnsmos import windows

from .conftest import add_noise, shared_clip

pytest.importorskip("speechmos")
pytest.importorskip("onnxruntime")


def test_windows_follow_the_dnsmos_protocol():
    short = np.ones(3 * 16000, np.float32)
    # doubled until it covers one 9.01 s window (3 -> 6 -> 12 s), then hopped: floor(12 - 9.01) + 1
    assert windows(short).shape == (3, 144160)
    assert windows(np.ones(10 * 16000, np.float32)).shape == (1, 144160)
    long = np.ones(20 * 16000, np.float32)
    assert windows(long).shape == (11, 144160)  # floor(20 - 9.01) + 1 windows hopped by 1 s


@pytest.fixture(scope="module")
def dnsmos():
    return DNSMOS()


def test_noise_lowers_dnsmos_on_real_speech(dnsmos):
    x, sr, _ = shared_clip("6829")
    x = np.tile(x, 3)[: int(9.5 * sr)]  # one 9.01 s DNSMOS window keeps the test fast
    clean = dnsmos.score(x, sr)
    noisy = dnsmos.score(add_noise(x, 5.0), sr)
    assert set(clean) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    # clean read speech rates as good; white noise at 5 dB hits the background score hardest
    assert clean["dnsmos_ovrl"] > 2.8 and clean["dnsmos_bak"] > 3.5
    assert clean["dnsmos_bak"] - noisy["dnsmos_bak"] > 1.5
    assert clean["dnsmos_ovrl"] - noisy["dnsmos_ovrl"] > 0.8
    assert clean["dnsmos_p808"] > noisy["dnsmos_p808"]


@pytest.mark.slow
def test_matches_the_speechmos_reference_implementation(dnsmos):
    from speechmos import dnsmos as reference

    x, sr, _ = shared_clip("260")
    ours = dnsmos.score(x, sr)
    theirs = reference.run(resample(x, sr, 16000), 16000)
    for k in ("sig", "bak", "ovrl", "p808"):
        assert ours[f"dnsmos_{k}"] == pytest.approx(float(theirs[f"{k}_mos"]), abs=1e-4)
