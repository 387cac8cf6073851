import math

import pytest
import torch

from metis.conditions import fit_length, mix_at_snr, snr_db
from tests.conditions.conftest import gen, speechlike


@pytest.mark.parametrize("snr", [-10.0, -5.0, 0.0, 7.5, 20.0])
def test_mix_at_snr_hits_the_requested_snr(snr):
    clean = speechlike(0.5, seed=1)
    noise = torch.randn(3000, generator=gen(2))  # shorter than clean: looped
    mixture = mix_at_snr(clean, noise, snr)
    assert mixture.shape == clean.shape
    assert abs(snr_db(clean, mixture - clean) - snr) < 0.5
    assert abs(snr_db(clean, mixture - clean) - snr) < 1e-3  # exact scaling, in fact


def test_snr_db_values():
    x = torch.ones(100)
    assert snr_db(x, 0.1 * x) == pytest.approx(20.0)
    assert snr_db(x, torch.zeros(100)) == math.inf


def test_fit_length_crops_and_loops():
    x = torch.arange(5.0)
    assert fit_length(x, 3, offset=1).tolist() == [1, 2, 3]
    assert fit_length(x, 8, offset=3).tolist() == [3, 4, 0, 1, 2, 3, 4, 0]


@pytest.mark.parametrize("clean,noise,msg", [
    (torch.zeros(0), torch.ones(4), "clean: zero-length"),
    (torch.ones(4), torch.zeros(0), "noise: zero-length"),
    (torch.zeros(4), torch.ones(4), "silent signal"),
    (torch.ones(4), torch.zeros(4), "silent noise"),
    (torch.ones(2, 4), torch.ones(4), "clean: expected mono"),
    (torch.tensor([1.0, float("nan")]), torch.ones(4), "clean: audio contains NaN"),
])
def test_mix_at_snr_bad_input(clean, noise, msg):
    with pytest.raises(ValueError, match=msg):
        mix_at_snr(clean, noise, 0.0)
