import json

import pytest
import torch

from metis.data.specs import load_tokenizer, tokenizer_node
from metis.tokenizers.base import SpeechTokenizer
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer, kmeans_pp, lloyd
from tests.data.conftest import tone


def wavs(n=6, seed=0):
    return [torch.from_numpy(tone(1.0 + 0.37 * i, seed=seed + i)) for i in range(n)]


CFG = KMeansConfig(n_clusters=16, max_iter=15)


def test_fit_is_deterministic_under_seed_and_changes_with_it():
    a, b = KMeansTokenizer.fit(wavs(), CFG, log=lambda *_: None), KMeansTokenizer.fit(wavs(), CFG, log=lambda *_: None)
    assert torch.equal(a.centroids, b.centroids)
    assert a.identity() == b.identity()
    test = wavs(3, seed=100)
    assert all(torch.equal(x, y) for x, y in zip(a.encode(test), b.encode(test)))
    c = KMeansTokenizer.fit(wavs(), KMeansConfig(n_clusters=16, max_iter=15, seed=1), log=lambda *_: None)
    assert not torch.equal(a.centroids, c.centroids)
    assert a.identity()["codec_sha256"] != c.identity()["codec_sha256"]


@pytest.fixture(scope="module")
def fitted():
    return KMeansTokenizer.fit(wavs(), CFG, log=lambda *_: None)


@pytest.mark.parametrize("n", [1, 7, 50, 149])
def test_codes_at_50_hz(n, fitted):
    tok = fitted
    (codes,) = tok.encode([torch.from_numpy(tone(n * 0.02))])  # n·0.02 s -> n codes
    assert codes.shape == (n,) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 16
    assert KMeansTokenizer.n_frames(n * 320) == n
    assert tok.frame_rate == 50 and tok.sample_rate == 16000


def test_protocol_save_load_and_spec(tmp_path, fitted):
    tok = fitted
    assert isinstance(tok, SpeechTokenizer)
    tok.save(tmp_path / "tk")
    back = load_tokenizer(f"kmeans:{tmp_path / 'tk'}")
    assert back.identity() == tok.identity()
    w = wavs(2, seed=50)
    assert all(torch.equal(x, y) for x, y in zip(tok.encode(w), back.encode(w)))
    assert tokenizer_node('semantic:{"device": "cuda"}') == {"_target_": "metis.tokenizers.semantic.SemanticTokenizer",
                                                             "device": "cuda"}
    node = tokenizer_node(f"kmeans:{tmp_path / 'tk'}")
    assert node == {"_target_": "metis.tokenizers.kmeans.KMeansTokenizer.load", "directory": str(tmp_path / "tk")}
    # the node itself (a mapping, or its JSON on a command line) builds the same tokenizer
    for spec in (node, json.dumps(node)):
        assert load_tokenizer(spec).identity() == tok.identity()
    with pytest.raises(FileNotFoundError, match="no fitted k-means"):
        load_tokenizer(f"kmeans:{tmp_path / 'nothing'}")  # the tokenizer's own error, naming the folder
    with pytest.raises(ValueError, match="tokenizer spec"):
        load_tokenizer("nonsense")
    with pytest.raises(ValueError, match="cannot build metis.nope.Tok"):
        load_tokenizer({"_target_": "metis.nope.Tok"})
    with pytest.raises(ValueError, match="keyword arguments only"):
        tokenizer_node("semantic:somewhere")


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(200, 2, generator=g) for c in truth])
    centers, _ = lloyd(x, kmeans_pp(x, 3, g), 50, 0.0)
    d = torch.cdist(truth, centers).min(1).values
    assert (d < 0.2).all()


def test_fit_needs_enough_frames():
    with pytest.raises(ValueError, match="at least n_clusters"):
        KMeansTokenizer.fit([torch.from_numpy(tone(0.1))], KMeansConfig(n_clusters=64))
