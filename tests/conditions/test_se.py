import pytest
import torch

from metis.conditions import NoiseBank, RIRBank, SEDegrader, snr_db
from tests.conditions.conftest import SR, gen, speechlike

ONLY_NOISE = dict(p_reverb=0.0, p_clip=0.0, p_bandlimit=0.0)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 5.0, 15.0])
@pytest.mark.parametrize("bank", ["coloured", "babble"])
def test_degraded_snr_within_half_a_db(snr, bank):
    clean = speechlike(0.6, seed=0)
    noise = NoiseBank.coloured() if bank == "coloured" else NoiseBank.babble([speechlike(0.3, seed=i) for i in (1, 2, 3)])
    deg = SEDegrader(noise=noise, snr_db=(snr, snr), **ONLY_NOISE)
    for seed in range(3):
        y, info = deg(clean, gen(seed))
        assert y.shape == clean.shape
        assert info["snr_db"] == pytest.approx(snr)
        assert abs(snr_db(clean, y - clean) - snr) < 0.5


def test_others_feed_babble_when_no_bank():
    clean = speechlike(0.5, seed=0)
    others = [speechlike(0.4, seed=i) for i in range(1, 6)]
    y, info = SEDegrader(snr_db=(3.0, 3.0), **ONLY_NOISE)(clean, gen(0), others=others)
    assert info["noise"] == "babble" and 3 <= info["noise_talkers"] <= 5
    assert abs(snr_db(clean, y - clean) - 3.0) < 0.5
    _, info = SEDegrader(**ONLY_NOISE)(clean, gen(0))
    assert info["noise"] == "coloured"


def test_full_chain_probabilities_and_info():
    clean = speechlike(0.5, seed=0)
    deg = SEDegrader(rirs=RIRBank.simulated(rt60=(0.3, 0.3)), snr_db=(10.0, 10.0), p_reverb=1.0, p_clip=1.0,
                     clip_db=(-6.0, -6.0), p_bandlimit=1.0, cutoffs_hz=(4000,))
    y, info = deg(clean, gen(0))
    assert y.shape == clean.shape
    assert info["reverb"] and info["rt60"] == pytest.approx(0.3) and info["cutoff_hz"] == 4000
    assert float(y.abs().max()) == pytest.approx(info["clip_threshold"])  # clipped last, at the drawn level
    p = torch.fft.rfft(y * torch.hann_window(len(y))).abs() ** 2
    f = torch.fft.rfftfreq(len(y), 1 / SR)
    # clipping after band-limiting spreads a little energy back above the cutoff; still small
    assert float(p[f > 4500].sum() / p.sum()) < 0.05
    nothing, info = SEDegrader(p_noise=0.0, **ONLY_NOISE)(clean, gen(0))
    assert torch.equal(nothing, clean) and info["snr_db"] is None and not info["reverb"]


def test_probabilities_are_respected():
    clean = speechlike(0.2, seed=0)
    deg = SEDegrader(p_noise=0.5, p_clip=0.25, p_bandlimit=0.0, p_reverb=0.0)
    infos = [deg(clean, gen(s))[1] for s in range(200)]
    assert 0.38 < sum(i["snr_db"] is not None for i in infos) / 200 < 0.62
    assert 0.15 < sum(i["clip_threshold"] is not None for i in infos) / 200 < 0.35


def test_deterministic_under_seed_and_different_across_seeds():
    clean = speechlike(0.5, seed=0)
    deg = SEDegrader(rirs=RIRBank.simulated(), p_reverb=0.5, p_clip=0.5, p_bandlimit=0.5)
    a, ia = deg(clean, gen(7))
    b, ib = deg(clean, gen(7))
    c, _ = deg(clean, gen(8))
    assert torch.equal(a, b) and ia == ib
    assert not torch.equal(a, c)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cutoffs_hz: 8000"):
        SEDegrader(cutoffs_hz=(2000, 8000))
    with pytest.raises(ValueError, match="p_noise"):
        SEDegrader(p_noise=1.5)
    with pytest.raises(ValueError, match="snr_db"):
        SEDegrader(snr_db=(10.0, -10.0))
    with pytest.raises(ValueError, match="clip_db"):
        SEDegrader(clip_db=(-3.0, 3.0))
    with pytest.raises(ValueError, match="noise bank is at 8000 Hz"):
        SEDegrader(noise=NoiseBank.coloured(sample_rate=8000))
    with pytest.raises(ValueError, match="silent"):
        SEDegrader()(torch.zeros(100), gen(0))
    with pytest.raises(ValueError, match="clean: zero-length"):
        SEDegrader()(torch.zeros(0), gen(0))
