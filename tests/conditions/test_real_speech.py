"""Simulators on real LibriTTS speech (../shared/audio); skipped with a reason when absent."""

import pytest

from metis.conditions import NoiseBank, SEDegrader, TSEMixer, VCPerturber, snr_db
from tests.conditions.conftest import centroid, gen, libritts


def test_two_speakers_at_0_db_sir():
    (s1, a), (s2, b) = libritts(2)
    assert s1 != s2
    mix, info = TSEMixer(sir_db=(0.0, 0.0))(a, b, gen(0))
    assert mix.shape == a.shape
    assert abs(snr_db(a, mix - a)) < 0.5


def test_coloured_noise_at_5_db_snr():
    (_, a), = libritts(1)
    y, info = SEDegrader(noise=NoiseBank.coloured(), snr_db=(5.0, 5.0), p_reverb=0, p_clip=0, p_bandlimit=0)(a, gen(1))
    assert info["noise"] == "coloured"
    assert abs(snr_db(a, y - a) - 5.0) < 0.5


@pytest.mark.parametrize("alpha", [0.85, 1.15])
def test_formant_shift_moves_the_centroid_of_real_speech(alpha):
    (_, a), = libritts(1)
    y, _ = VCPerturber(formant_shift=(alpha, alpha), pitch_shift_semitones=(0.0, 0.0))(a, gen(0))
    assert y.shape == a.shape
    assert (centroid(y) - centroid(a)) * (alpha - 1) > 0
