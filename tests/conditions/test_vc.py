import pytest
import torch

from metis.conditions import VCPerturber, perturb_timbre
from tests.conditions.conftest import centroid, f0_autocorr, gen, speechlike, vowel


def frame_rms(x: torch.Tensor, hop: int = 320) -> torch.Tensor:
    return x[: len(x) // hop * hop].reshape(-1, hop).pow(2).mean(1).sqrt()


def test_zero_shift_is_identity():
    x = speechlike(0.5, seed=0)
    y, ratio = perturb_timbre(x, 1.0, 0.0)
    assert ratio == 1.0 and torch.equal(y, x)
    y, info = VCPerturber(formant_shift=(1.0, 1.0), pitch_shift_semitones=(0.0, 0.0))(x, gen(0))
    assert torch.equal(y, x)


@pytest.mark.parametrize("semitones", [-4.0, 3.0])
def test_pitch_shift_moves_f0_keeps_length(semitones):
    x = vowel(1.0, f0=140.0)
    y, ratio = perturb_timbre(x, 1.0, semitones)
    assert y.shape == x.shape
    assert ratio == pytest.approx(2 ** (semitones / 12), rel=2e-3)
    assert f0_autocorr(y) == pytest.approx(140.0 * ratio, rel=0.02)


@pytest.mark.parametrize("alpha", [0.85, 1.15])
def test_formant_shift_moves_the_envelope_keeps_f0(alpha):
    x = vowel(1.0, f0=140.0)
    y, _ = perturb_timbre(x, alpha, 0.0)
    assert y.shape == x.shape
    assert f0_autocorr(y) == pytest.approx(f0_autocorr(x), rel=0.01)
    c0, c1 = centroid(x), centroid(y)
    assert (c1 - c0) * (alpha - 1) > 0 and abs(c1 / c0 - 1) > 0.1  # moved, in the expected direction


def test_content_kept():
    x = speechlike(1.0, seed=2)
    y, info = VCPerturber(formant_shift=(1.12, 1.12), pitch_shift_semitones=(2.0, 2.0))(x, gen(0))
    assert info["perturbed"] and y.shape == x.shape
    assert float(y.abs().max()) == pytest.approx(float(x.abs().max()), rel=1e-5)
    # the syllable envelope (timing of the content) survives
    ex, ey = frame_rms(x), frame_rms(y)
    assert float(torch.corrcoef(torch.stack([ex, ey]))[0, 1]) > 0.9


def test_deterministic_under_seed_and_different_across_seeds():
    x = speechlike(0.4, seed=0)
    vc = VCPerturber()
    a, ia = vc(x, gen(3))
    b, ib = vc(x, gen(3))
    c, ic = vc(x, gen(4))
    assert torch.equal(a, b) and ia == ib
    assert not torch.equal(a, c)
    assert 0.85 <= ia["formant_shift"] <= 1.15 and -4 <= ia["pitch_semitones"] <= 4


def test_bad_input():
    with pytest.raises(ValueError, match="wav: zero-length"):
        VCPerturber()(torch.zeros(0), gen(0))
    with pytest.raises(ValueError, match="formant_shift"):
        VCPerturber(formant_shift=(0.0, 1.2))
