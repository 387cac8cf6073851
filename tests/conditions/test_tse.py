import pytest
import torch

from metis.conditions import TSEMixer, snr_db
from tests.conditions.conftest import gen, speechlike


@pytest.mark.parametrize("sir", [-5.0, 0.0, 2.5, 5.0])
@pytest.mark.parametrize("m", [3000, 8000, 20000])  # shorter (looped), equal, longer (cropped)
def test_mixture_sir_within_half_a_db(sir, m):
    target = speechlike(0.5, seed=0)
    interferer = speechlike(m / 16000, seed=1)
    mix, info = TSEMixer(sir_db=(sir, sir))(target, interferer, gen(3))
    assert mix.shape == target.shape
    assert info["sir_db"] == pytest.approx(sir) and info["snr_db"] is None
    assert abs(snr_db(target, mix - target) - sir) < 0.5


def test_several_interferers_and_background_noise():
    target = speechlike(0.5, seed=0)
    inter = [speechlike(0.3, seed=1), 3.0 * speechlike(0.7, seed=2)]
    mixer = TSEMixer(sir_db=(0.0, 0.0), snr_db=(10.0, 10.0), p_noise=1.0)
    mix, info = mixer(target, inter, gen(0))
    assert info["n_interferers"] == 2 and info["snr_db"] == 10.0 and info["noise"] == "coloured"
    assert len(info["interferer_offsets"]) == 2
    # the residual is interferers (SIR 0 dB) + noise (SNR 10 dB): total 10·log10(1/(1 + 0.1)) dB
    assert abs(snr_db(target, mix - target) - (-10 * torch.log10(torch.tensor(1.1)).item())) < 0.5


def test_deterministic_under_seed_and_different_across_seeds():
    target, interferer = speechlike(0.5, seed=0), speechlike(1.0, seed=1)
    mixer = TSEMixer()
    a, ia = mixer(target, interferer, gen(1))
    b, ib = mixer(target, interferer, gen(1))
    c, ic = mixer(target, interferer, gen(2))
    assert torch.equal(a, b) and ia == ib
    assert not torch.equal(a, c) and ia["sir_db"] != ic["sir_db"]


def test_bad_input():
    t = speechlike(0.2, seed=0)
    with pytest.raises(ValueError, match="interferer 0: zero-length"):
        TSEMixer()(t, torch.zeros(0), gen(0))
    with pytest.raises(ValueError, match="interferer 0 is silent"):
        TSEMixer()(t, torch.zeros(50), gen(0))
    with pytest.raises(ValueError, match="target is silent"):
        TSEMixer()(torch.zeros(50), t, gen(0))
    with pytest.raises(ValueError, match="no interferer"):
        TSEMixer()(t, [], gen(0))
