import torch
from safetensors.torch import load_file

from metis.data.stats import RunningStats, compute_stats
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer
from tests.data.conftest import write_corpus


def test_running_stats_match_torch():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, 8, generator=g) * 3 + 5 for n in (1, 7, 100, 33, 2)]
    rs, other = RunningStats(), RunningStats()
    for c in chunks[:3]:
        rs.update(c)
    for c in chunks[3:]:
        other.update(c)
    rs.merge(other)  # Chan's merge of two partial results
    x = torch.cat(chunks).double()
    assert rs.n == x.shape[0]
    torch.testing.assert_close(rs.mean, x.mean(0))
    torch.testing.assert_close(rs.var, x.var(0))


def test_stats_file_over_shards(tmp_path):
    shards = write_corpus(tmp_path, 2, 4, sem=False, identity=None)
    tok = KMeansTokenizer.fit([torch.randn(16000)], KMeansConfig(n_clusters=8), log=lambda *_: None)
    out = tmp_path / "stats.safetensors"
    summary = compute_stats(shards, tok, out, batch_seconds=5.0, progress=False)
    st = load_file(str(out))
    assert set(st) == {"mean", "var", "std"} and all(v.dtype == torch.float32 for v in st.values())
    # reference: all raw features at once
    import numpy as np

    from metis import audio
    from metis.data.shards import iter_tar

    feats = []
    for url in shards:
        for s in iter_tar(url):
            if "flac" in s:
                wav, _ = audio.read(s["flac"])
                feats.extend(tok.raw_features([torch.from_numpy(wav)]))
    x = torch.cat(feats).double()
    assert summary["frames"] == x.shape[0] and summary["dim"] == 160
    torch.testing.assert_close(st["mean"], x.mean(0).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st["var"], x.var(0).float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st["std"], st["var"].sqrt())
