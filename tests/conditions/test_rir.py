import numpy as np
import pytest
import torch

from metis.conditions import AudioError, RIRBank, reverberate, schroeder_rt60, simulate_rir
from tests.conditions.conftest import SR, gen, speechlike, write_wav

RT60_TOL = 0.10  # relative: the T20 estimate of one noise realisation wanders by a few percent


@pytest.mark.parametrize("rt60", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("drr", [0.0, 10.0])
def test_simulated_rir_has_the_requested_rt60(rt60, drr):
    for seed in range(2):
        h = simulate_rir(rt60, gen(seed), SR, drr_db=drr)
        assert int(h.abs().argmax()) == round(0.002 * SR) and float(h.max()) == 1.0
        assert schroeder_rt60(h, SR) == pytest.approx(rt60, rel=RT60_TOL)
        # direct-to-reverberant energy ratio as requested
        d = int(h.abs().argmax())
        assert 10 * np.log10(1.0 / float(h[d + 1:].pow(2).sum() + (h[d] - 1) ** 2)) == pytest.approx(drr, abs=0.1)


def test_schroeder_rt60_of_an_exact_exponential():
    t = torch.arange(SR) / SR
    h = torch.randn(SR, generator=gen(0)) * torch.exp(-3 * np.log(10) * t / 0.6)
    assert schroeder_rt60(h, SR) == pytest.approx(0.6, rel=0.05)


def test_reverberate_keeps_length_and_direct_path():
    dry = speechlike(0.5, seed=3)
    h = simulate_rir(0.4, gen(1), SR, drr_db=5.0)
    wet = reverberate(dry, h)
    assert wet.shape == dry.shape
    # cross-correlation of wet against dry peaks at lag 0 (no shift of the direct path)
    n = len(dry)
    xc = torch.fft.irfft(torch.fft.rfft(wet, 2 * n) * torch.fft.rfft(dry, 2 * n).conj(), 2 * n)
    lag = int(xc.argmax())
    assert lag == 0, f"direct path shifted by {lag if lag < n else lag - 2 * n} samples"
    # an impulse comes back as the RIR from its peak on
    imp = torch.zeros(4000)
    imp[100] = 1.0
    out = reverberate(imp, h)
    d = int(h.abs().argmax())
    assert torch.allclose(out[100:], h[d:d + 3900], atol=1e-5)
    assert float(out[:100].abs().max()) < 1e-5


def test_rir_bank_simulated_deterministic_and_in_range():
    bank = RIRBank.simulated(rt60=(0.3, 0.6))
    a, info = bank.draw(gen(4))
    b, _ = bank.draw(gen(4))
    c, _ = bank.draw(gen(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.3 <= info["rt60"] <= 0.6 and info["rir"] == "simulated"


def test_rir_bank_folder(tmp_path):
    h = simulate_rir(0.3, gen(0), 8000).numpy()
    two = np.stack([h, np.roll(h, 50)], axis=1) * 0.5  # 2 channels with different delays, 8 kHz
    write_wav(tmp_path / "room.wav", two, 8000)
    bank = RIRBank.from_folder(tmp_path, sample_rate=SR)
    r, info = bank.draw(gen(0))
    assert info == {"rir": "file", "rir_file": str(tmp_path / "room.wav")}
    assert float(r.abs().max()) == pytest.approx(1.0)
    assert int(r.abs().argmax()) == pytest.approx(2 * int(np.abs(h).argmax()), abs=2)  # channel 0, resampled x2
    assert schroeder_rt60(r, SR) == pytest.approx(0.3, rel=0.15)


def test_rir_bank_bad_files(tmp_path):
    with pytest.raises(AudioError, match="RIR folder"):
        RIRBank.from_folder(tmp_path)
    write_wav(tmp_path / "zeros.wav", np.zeros(100, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="unusable RIR files in a row .*zeros.wav: all-zero audio"):
        RIRBank.from_folder(tmp_path).sample(gen(0))
    with pytest.raises(ValueError, match="rt60"):
        simulate_rir(0.0, gen(0))


def test_bad_rir_files_are_skipped_and_counted(tmp_path):
    from tests.bad_audio import write_bad_wavs

    bad = write_bad_wavs(tmp_path, seconds=0.2, sr=SR, names=("minus_one_int16", "dc", "all_nan"))
    rooms = {str(write_wav(tmp_path / f"room{i}.wav", simulate_rir(0.3, gen(i), SR).numpy() * 0.5, SR))
             for i in range(8)}
    bank = RIRBank.from_folder(tmp_path, sample_rate=SR)
    infos = [bank.draw(gen(i))[1] for i in range(60)]
    assert {i["rir_file"] for i in infos} <= rooms
    assert set(bank.skips.totals) == {"rir_clipped_audio", "rir_constant_audio", "rir_nan_audio"}
    assert bank.skips.total >= len(bad)
