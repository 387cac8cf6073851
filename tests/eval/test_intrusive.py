import numpy as np
import pytest

from metis.audio import Audio, resample
from metis.eval.metrics import PESQ, SISDR, STOI

from .conftest import add_noise, shared_clip, speechlike

pytest.importorskip("pesq")
pytest.importorskip("pystoi")


def test_sisdr_of_5db_mixture_is_5db():
    x = speechlike(4.0, 16000)
    out = SISDR().score(add_noise(x, 5.0), 16000, reference=Audio(x, 16000))
    assert abs(out["si_sdr"] - 5.0) < 0.2
    assert abs(out["sdr"] - 5.0) < 0.5


def test_clean_reference_scores_at_the_top():
    x = speechlike(3.0, 16000)
    ref = Audio(x, 16000)
    p = PESQ().score(x, 16000, reference=ref)
    assert p["pesq_wb"] > 4.5 and p["pesq_nb"] > 4.4
    s = STOI().score(x, 16000, reference=ref)
    assert s["stoi"] > 0.99 and s["estoi"] > 0.99
    assert SISDR().score(x, 16000, reference=ref)["si_sdr"] > 60


def test_noise_lowers_intrusive_metrics_in_order():
    x = speechlike(3.0, 16000)
    ref = Audio(x, 16000)
    scores = {snr: {**PESQ(("wb",)).score(add_noise(x, snr), 16000, reference=ref),
                    **STOI().score(add_noise(x, snr), 16000, reference=ref),
                    **SISDR().score(add_noise(x, snr), 16000, reference=ref)} for snr in (20, 10, 0)}
    for key in ("pesq_wb", "stoi", "estoi", "si_sdr"):
        assert scores[20][key] > scores[10][key] > scores[0][key], key
    assert scores[10]["si_sdr"] == pytest.approx(10, abs=0.2)


def test_rate_and_length_mismatch_are_handled():
    x = speechlike(3.0, 16000)
    est = np.concatenate([resample(x, 16000, 24000), np.zeros(37, np.float32)])  # 24 kHz, a few samples long
    out = SISDR().score(est, 24000, reference=Audio(x, 16000))
    assert out["si_sdr"] > 20


def test_bad_pesq_mode_is_rejected():
    with pytest.raises(ValueError, match="wb"):
        PESQ(("xb",))


def test_real_speech_with_noise():
    x, sr, _ = shared_clip("260")
    ref = Audio(x, sr)
    clean = {**PESQ().score(x, sr, reference=ref), **STOI().score(x, sr, reference=ref)}
    noisy = {**PESQ().score(add_noise(x, 5), sr, reference=ref), **STOI().score(add_noise(x, 5), sr, reference=ref)}
    assert clean["pesq_wb"] > 4.5 and clean["stoi"] > 0.99
    # white noise at 5 dB SNR is a hard case for PESQ: well below 2 on real speech
    assert noisy["pesq_wb"] < 2.0 and noisy["pesq_nb"] < 2.5
    assert 0.5 < noisy["stoi"] < 0.95
    assert SISDR().score(add_noise(x, 5), sr, reference=ref)["si_sdr"] == pytest.approx(5, abs=0.2)


def test_mel_distance_is_zero_for_the_reference_and_grows_with_noise():
    from metis.eval.metrics import MelDistance

    x = speechlike(2.0, 24000)
    ref = Audio(x, 24000)
    assert MelDistance().score(x, 24000, reference=ref)["mel_distance"] < 1e-6
    d = [MelDistance().score(add_noise(x, snr), 24000, reference=ref)["mel_distance"] for snr in (30, 10, 0)]
    assert 0 < d[0] < d[1] < d[2]
