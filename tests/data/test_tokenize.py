import os

import numpy as np
import pytest
import torch

from metis.data.loader import build_loader
from metis.data.shards import iter_tar, load_npy, read_tokenizers
from metis.data.tokenize import TokenizerMismatch, tokenize
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer
from tests.data.conftest import write_corpus


class Counting:
    """Wraps a tokenizer and counts encoded waveforms."""

    def __init__(self, tok):
        self.tok, self.calls, self.waves = tok, 0, 0
        self.sample_rate, self.frame_rate, self.name = tok.sample_rate, tok.frame_rate, tok.name
        self.codebook_size = tok.codebook_size

    def identity(self):
        return self.tok.identity()

    def encode(self, wavs):
        self.calls += 1
        self.waves += len(wavs)
        return self.tok.encode(wavs)


class FakeAcoustic:
    """A stand-in 24 kHz, 12-codebook tokenizer: codes (t, 12) at 50 Hz (hop 480)."""

    name, sample_rate, frame_rate, codebook_size = "fake-ac", 24000, 50.0, 1024

    def identity(self):
        return {"name": self.name, "codec_sha256": "a" * 64}

    def encode(self, wavs):
        return [torch.arange(len(w) // 480 * 12).reshape(-1, 12) % 1024 for w in wavs]


@pytest.fixture(scope="module")
def kmeans():
    g = torch.Generator().manual_seed(0)
    return KMeansTokenizer.fit([torch.randn(32000, generator=g) * 0.1], KMeansConfig(n_clusters=8),
                               log=lambda *_: None)


def test_tokenize_writes_tokens_and_resumes(tmp_path, kmeans):
    shards = write_corpus(tmp_path / "raw", 3, 4, sem=False, identity=None)
    out = tmp_path / "tok"
    tok = Counting(kmeans)
    s1 = tokenize(shards, out, tok, batch_seconds=6.0, progress=False)
    assert s1["tokenized"] == 3 and s1["samples"] == 12 and tok.waves == 12 and tok.calls > 3  # batched
    outs = sorted(out.glob("*.tar"))
    assert [p.name for p in outs] == [os.path.basename(s) for s in shards]
    assert read_tokenizers(str(outs[0])) == {"sem": kmeans.identity()}
    for s in iter_tar(str(outs[0])):
        if s["__key__"] != "__tokenizer__":
            sem = load_npy(s["sem.npy"])
            assert sem.dtype == np.int16 and "flac" in s and "json" in s
    # an "interruption": the last shard never got written; the others must not be redone
    mtimes = {p.name: p.stat().st_mtime_ns for p in outs}
    outs[-1].unlink()
    tok2 = Counting(kmeans)
    s2 = tokenize(shards, out, tok2, batch_seconds=6.0, progress=False)
    assert s2["already_done"] == 2 and s2["tokenized"] == 1 and tok2.waves == 4
    for p in outs[:-1]:
        assert p.stat().st_mtime_ns == mtimes[p.name]
    assert not list(out.glob(".*.tmp"))  # no temporary leftovers (metis.atomic names them .<name>.<random>.tmp)
    # the loader reads them back with the identity check on
    loader = build_loader(str(out), mode="val", max_tokens=1000, num_workers=0, tokenizer_identity=kmeans.identity(),
                          max_dur=10)
    assert sum(len(b["id"]) for b in loader) == 12 and loader.skips.total == 0


def test_tokenize_refuses_other_tokenizer(tmp_path, kmeans):
    shards = write_corpus(tmp_path / "raw", 1, 2, sem=False, identity=None)
    tokenize(shards, tmp_path / "tok", kmeans, progress=False)
    other = KMeansTokenizer.fit([torch.randn(32000) * 0.1], KMeansConfig(n_clusters=8, seed=5), log=lambda *_: None)
    with pytest.raises(TokenizerMismatch, match="Refusing to mix"):
        tokenize(shards, tmp_path / "tok", other, progress=False)


def test_tokenize_with_acoustic_and_no_audio(tmp_path, kmeans):
    shards = write_corpus(tmp_path / "raw", 1, 3, sem=False, identity=None)
    tokenize(shards, tmp_path / "tok", kmeans, FakeAcoustic(), keep_audio=False, progress=False)
    out = str(tmp_path / "tok" / os.path.basename(shards[0]))
    ids = read_tokenizers(out)
    assert ids == {"sem": kmeans.identity(), "ac": FakeAcoustic().identity()}
    for s in iter_tar(out):
        if s["__key__"] != "__tokenizer__":
            assert "flac" not in s and load_npy(s["ac.npy"]).shape[0] == 12
    loader = build_loader(out, mode="val", max_tokens=1000, num_workers=0, fields=("sem", "ac"),
                          tokenizer_identity=kmeans.identity(), acoustic_identity=FakeAcoustic().identity(), max_dur=10)
    b = next(iter(loader))
    assert b["ac"].shape[-1] == 12 and abs(b["ac"].shape[1] - b["sem"].shape[1]) <= 1


def test_cli_tokenize_and_stats(tmp_path, kmeans, capsys):
    from safetensors.torch import load_file

    from metis.data.__main__ import main

    shards = write_corpus(tmp_path / "raw", 2, 2, sem=False, identity=None)
    kmeans.save(tmp_path / "tk")
    spec = f"kmeans:{tmp_path / 'tk'}"
    assert main(["tokenize", str(tmp_path / "raw"), str(tmp_path / "tok"), "--tokenizer", spec]) == 0
    assert main(["tokenize", str(tmp_path / "raw"), str(tmp_path / "tok"), "--tokenizer", spec]) == 0
    out = capsys.readouterr().out
    assert "tokenized: 2" in out and "already_done: 2" in out
    assert main(["stats", str(tmp_path / "raw"), str(tmp_path / "st.safetensors"), "--features", spec]) == 0
    assert load_file(str(tmp_path / "st.safetensors"))["mean"].shape == (160,)
