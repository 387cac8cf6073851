import pytest
import torch

from metis.conditions import SpeakerReservoir
from tests.conditions.conftest import gen


def w(v: float, n: int = 10) -> torch.Tensor:
    return torch.full((n,), v)


def test_draw_same_speaker_excluding_key():
    r = SpeakerReservoir(per_speaker=3)
    r.add("a", "a1", w(1.0), torch.tensor([1, 2]))
    assert r.draw("a", "a1", gen(0)) is None  # only the excluded utterance
    assert r.draw("zzz", None, gen(0)) is None
    r.add("a", "a2", w(2.0))
    key, wav, tokens = r.draw("a", "a1", gen(0))
    assert key == "a2" and torch.equal(wav, w(2.0)) and tokens is None
    keys = {r.draw("a", None, gen(s))[0] for s in range(20)}
    assert keys == {"a1", "a2"}


def test_per_speaker_cap_keeps_the_most_recent_and_copies():
    r = SpeakerReservoir(per_speaker=2)
    src = w(0.0)
    for i in range(4):
        src.fill_(float(i))
        r.add("a", f"k{i}", src)
    assert len(r) == 2
    found = {r.draw("a", None, gen(s))[0]: r.draw("a", None, gen(s))[1][0].item() for s in range(20)}
    assert found == {"k2": 2.0, "k3": 3.0}  # the stored copies did not follow `src`
    r.add("a", "k3", w(9.0))  # same key replaces
    assert len(r) == 2 and r.total_samples == 20


def test_speaker_and_sample_caps_evict_least_recent_speaker():
    r = SpeakerReservoir(per_speaker=2, max_speakers=2)
    for s in "abc":
        r.add(s, f"{s}1", w(1.0))
    assert r.speakers == ["b", "c"]
    r = SpeakerReservoir(per_speaker=4, max_total_samples=25)
    r.add("a", "a1", w(1.0))
    r.add("b", "b1", w(1.0))
    r.add("c", "c1", w(1.0))
    assert r.speakers == ["b", "c"] and r.total_samples == 20


def test_draw_other_and_sample_wavs():
    r = SpeakerReservoir()
    r.add("a", "a1", w(1.0))
    assert r.draw_other("a", gen(0)) is None
    r.add("b", "b1", w(2.0))
    r.add("c", "c1", w(3.0))
    spks = {r.draw_other("a", gen(s))[0] for s in range(20)}
    assert spks == {"b", "c"}
    wavs = r.sample_wavs(5, gen(0), exclude_speaker="a")
    assert sorted(x[0].item() for x in wavs) == [2.0, 3.0]


def test_bad_input():
    r = SpeakerReservoir()
    with pytest.raises(ValueError, match="empty speaker for key 'k'"):
        r.add("", "k", w(1.0))
    with pytest.raises(ValueError, match="'k'.*zero-length"):
        r.add("a", "k", torch.zeros(0))
