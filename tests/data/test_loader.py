import json
import math
import os

import numpy as np
import pytest

from metis.data.loader import build_loader
from metis.data.shards import ShardWriter, npy_bytes
from tests.data.conftest import FAKE_ID, flac, meta, sample, tone, write_corpus


def ids_of(loader, limit=None):
    out = []
    for i, b in enumerate(loader):
        out.extend(b["id"])
        if limit is not None and i + 1 >= limit:
            break
    return out


def test_val_two_workers_every_sample_once(corpus):
    loader = build_loader(corpus, mode="val", max_tokens=1500, num_workers=2, fields=("sem",), max_dur=10)
    got = ids_of(loader)
    assert sorted(got) == sorted(f"s{s}_{i}" for s in range(4) for i in range(10))
    assert loader.skips.total == 0
    assert ids_of(loader) == got  # finite and deterministic: same order on the next pass


def test_val_batch_contents_budget_and_audio(corpus):
    loader = build_loader(corpus, mode="val", max_tokens=800, num_workers=2, fields=("sem", "wav16", "wav24"),
                          max_dur=10)
    n = 0
    for b in loader:
        bsz, t = b["sem"].shape
        assert bsz * t <= 800 and bsz * max(b["sem_lens"].tolist()) <= 800
        assert b["sem_mask"].shape == (bsz, t) and b["sem_mask"].sum().item() == b["sem_lens"].sum().item()
        assert b["sem"].dtype.is_floating_point is False and b["sem"].dtype.itemsize == 8
        assert 0 <= b["padding_ratio"] < 1
        assert b["padding_ratio"] == pytest.approx(1 - b["n_frames"] / (bsz * t))
        for f, sr in (("wav16", 16000), ("wav24", 24000)):
            assert b[f].shape[0] == bsz
            for j in range(bsz):
                assert abs(b[f"{f}_lens"][j].item() - b["duration"][j].item() * sr) <= sr * 0.002
        assert len(b["text"]) == len(b["speaker"]) == len(b["id"]) == bsz
        assert b["text"][0].startswith("text of ")
        n += bsz
    assert n == 40


def test_two_ranks_are_disjoint_and_complete(corpus):
    per_rank = [ids_of(build_loader(corpus, mode="val", max_tokens=1500, num_workers=2, rank=r, world_size=2,
                                    max_dur=10)) for r in range(2)]
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(f"s{s}_{i}" for s in range(4) for i in range(10))


def test_ranks_from_environment(corpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = []
    for r in range(2):
        monkeypatch.setenv("RANK", str(r))
        got.append(ids_of(build_loader(corpus, mode="val", max_tokens=1500, num_workers=0, max_dur=10)))
    assert set(got[0]).isdisjoint(got[1]) and len(got[0]) + len(got[1]) == 40


def test_fewer_shards_than_slots_still_each_sample_once(tmp_path):
    shards = write_corpus(tmp_path, 1, 12)  # 1 shard, 2 ranks × 2 workers: split by sample
    per_rank = [ids_of(build_loader(shards, mode="val", max_tokens=1500, num_workers=2, rank=r, world_size=2,
                                    max_dur=10)) for r in range(2)]
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(f"s0_{i}" for i in range(12))


def test_train_mode_is_endless_and_rank_specific(tmp_path):
    shards = write_corpus(tmp_path, 2, 5)  # 10 samples, yet 2 workers keep producing
    kw = dict(mode="train", max_tokens=600, num_workers=2, world_size=2, max_dur=10, shuffle_buffer=4)
    a = ids_of(build_loader(shards, rank=0, seed=1, **kw), limit=30)
    b = ids_of(build_loader(shards, rank=1, seed=1, **kw), limit=30)
    a2 = ids_of(build_loader(shards, rank=0, seed=1, **kw), limit=30)
    assert len(a) > 30 and len(b) > 30  # more than one pass over the 10 samples: no rank runs dry
    assert a != b  # ranks draw different orders
    assert a == a2  # deterministic under the seed


def test_train_batches_per_epoch_and_epoch_reshuffle(tmp_path):
    shards = write_corpus(tmp_path, 3, 6)
    loader = build_loader(shards, mode="train", max_tokens=600, num_workers=2, batches_per_epoch=8, max_dur=10,
                          shuffle_buffer=4, rank=0, world_size=1)
    e1, e2 = ids_of(loader), ids_of(loader)
    assert len(list(loader)) == 8
    assert e1 != e2  # a new epoch reshuffles


def test_tokenizer_identity_mismatch_is_skipped_and_counted(tmp_path):
    good = write_corpus(tmp_path, 1, 6, prefix="g")
    other = write_corpus(tmp_path, 1, 4, prefix="o", identity={**FAKE_ID, "codec_sha256": "1" * 64})
    loader = build_loader(good + other, mode="val", max_tokens=2000, num_workers=2, tokenizer_identity=FAKE_ID,
                          max_dur=10)
    got = ids_of(loader)
    assert sorted(got) == sorted(f"g0_{i}" for i in range(6))
    assert loader.skips.as_dict() == {"tokenizer_mismatch": 4}


def wav_bytes(w, sr=16000):
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, w, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def nan_wav_bytes(dur=1.0, sr=16000):
    w = tone(dur, sr)
    w[100:200] = np.nan
    return wav_bytes(w, sr)


def test_each_kind_of_bad_sample_is_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.tar"
    good_keys = []
    with ShardWriter(path, tokenizers={"sem": FAKE_ID}) as w:
        for i in range(3):
            w.write(f"good{i}", sample(f"good{i}", 2.0, seed=i))
            good_keys.append(f"good{i}")
        w.write("garbage", {"flac": b"not audio at all" * 50, "json": meta("garbage", 2.0)})
        full = flac(tone(2.0))
        w.write("truncated", {"flac": full[: len(full) // 3], "json": meta("truncated", 2.0)})
        nojson = sample("nofield", 2.0)
        nojson["json"] = json.dumps({"id": "nofield", "text": "x", "duration": 2.0, "language": "en"}).encode()
        w.write("nofield", nojson)  # no "speaker"
        w.write("badjson", {**sample("badjson", 2.0), "json": b"{not json"})
        w.write("empty", {"flac": flac(np.zeros(0, np.float32)), "json": meta("empty", 0.0)})
        w.write("zerolen", {"wav": wav_bytes(np.zeros(0, np.float32)), "json": meta("zerolen", 2.0)})  # json lies
        w.write("long", sample("long", 12.0))
        w.write("short", sample("short", 0.2))
        w.write("nan", {"wav": nan_wav_bytes(), "json": meta("nan", 1.0)})
        w.write("notokens", sample("notokens", 2.0, sem=False))
        w.write("silent", {"flac": flac(np.zeros(32000, np.float32)), "json": meta("silent", 2.0)})
    loader = build_loader(str(path), mode="val", max_tokens=1000, num_workers=2, fields=("wav16",), max_dur=10)
    assert sorted(ids_of(loader)) == sorted(good_keys + ["notokens"])
    assert loader.skips.as_dict() == {
        "undecodable_audio": 2, "missing_field": 1, "bad_json": 1, "empty_audio": 2, "too_long": 1,
        "too_short": 1, "nan_audio": 1, "silent_audio": 1}
    # token path: the sample without sem.npy is the one skipped (missing_field), audio is never decoded
    loader = build_loader(str(path), mode="val", max_tokens=1000, num_workers=0, fields=("sem",), max_dur=10)
    got = ids_of(loader)
    assert sorted(got) == sorted(good_keys)
    assert loader.skips.as_dict() == {  # audio-only samples now lack the required sem.npy
        "missing_field": 7, "bad_json": 1, "empty_audio": 1, "too_long": 1, "too_short": 1}


def test_bad_token_arrays_are_skipped(tmp_path):
    path = tmp_path / "tok.tar"
    with ShardWriter(path, tokenizers={"sem": FAKE_ID}) as w:
        w.write("ok", sample("ok", 2.0))
        w.write("float", {**sample("float", 2.0), "sem.npy": npy_bytes(np.zeros(100, np.float32))})
        w.write("misaligned", {**sample("misaligned", 2.0), "sem.npy": npy_bytes(np.zeros(40, np.int16))})
        w.write("corrupt", {**sample("corrupt", 2.0), "sem.npy": b"\x93NUMPY garbage"})
    loader = build_loader(str(path), mode="val", max_tokens=1000, num_workers=0, max_dur=10)
    assert ids_of(loader) == ["ok"]
    assert loader.skips.as_dict() == {"bad_tokens": 3}


def test_truncated_shard_does_not_crash(tmp_path, corpus):
    data = open(corpus[0], "rb").read()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 2 + 100])
    loader = build_loader([str(broken)] + corpus[1:], mode="val", max_tokens=1500, num_workers=2, max_dur=10)
    got = ids_of(loader)
    assert {f"s{s}_{i}" for s in (1, 2, 3) for i in range(10)} <= set(got)
    assert loader.skips.totals["shard_error"] >= 1


def test_acoustic_tokens_and_collation(tmp_path):
    path = tmp_path / "ac.tar"
    with ShardWriter(path, tokenizers={"sem": FAKE_ID, "ac": FAKE_ID}) as w:
        for i, d in enumerate((1.0, 2.0)):
            s = sample(f"a{i}", d)
            s["ac.npy"] = npy_bytes(np.full((12, int(d * 50)), i + 1, np.int16))
            w.write(f"a{i}", s)
    b = next(iter(build_loader(str(path), mode="val", max_tokens=1000, num_workers=0, fields=("sem", "ac"),
                               max_dur=10)))
    assert b["ac"].shape == (2, 100, 12)
    assert b["ac_lens"].tolist() == [50, 100] and b["ac_mask"].sum() == 150
    assert (b["ac"][0, :50] == 1).all() and (b["ac"][0, 50:] == 0).all()


def test_shard_pattern_errors(tmp_path):
    with pytest.raises(ValueError, match="nothing-here"):
        build_loader(str(tmp_path / "nothing-here-*.tar"), mode="val")
    with pytest.raises(FileNotFoundError, match=r"3 shard\(s\) from pattern .*missing-\{0001..0003\}"):
        build_loader(str(tmp_path / "missing-{0001..0003}.tar"), mode="val")
    with pytest.raises(ValueError, match="empty shard list"):
        build_loader([], mode="val")
    with pytest.raises(ValueError, match="max_tokens"):
        build_loader(str(tmp_path), mode="val", max_tokens=100, max_dur=30)


def test_brace_pattern(corpus):
    pattern = os.path.join(os.path.dirname(corpus[0]), "s-{0000..0003}.tar")
    assert len(ids_of(build_loader(pattern, mode="val", max_tokens=1500, num_workers=0, max_dur=10))) == 40


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("num_workers,rank,world", [(2, 0, 1), (0, 0, 1), (2, 1, 2)])
def test_train_stream_resumes_exactly_from_a_saved_position(tmp_path, num_workers, rank, world):
    """The position after batch k (taken while the workers have run ahead), restored into a new loader,
    gives exactly the uninterrupted stream's batches k+1, ...: across shard boundaries, passes, the
    shuffle buffer and the batching pool."""
    shards = write_corpus(tmp_path, 3, 6, audio=False)  # 18 samples: a few passes in 40 batches
    kw = dict(mode="train", max_tokens=400, num_workers=num_workers, max_dur=8, shuffle_buffer=5, pool_batches=3,
              rank=rank, world_size=world, seed=3)
    straight = [b["key"] for b in _take(build_loader(shards, **kw), 40)]
    for k in (1, 7, 13):
        first = build_loader(shards, **kw)
        it = iter(first)
        seen = [next(it) for _ in range(k + 5)]  # the trainer is at batch k, the loader 5 batches ahead
        assert [b["stream_batch"] for b in seen] == list(range(1, k + 6))
        state = first.position(k)
        assert state["batches"] == k and first.position_mismatch(state) is None
        resumed = build_loader(shards, **kw)
        resumed.resume_from(state)
        got = [b["key"] for b in _take(resumed, 40 - k)]
        assert got == straight[k:], f"resumed after batch {k} differs"
    import torch  # the position is plain data: a weights-only checkpoint load takes it back
    path = tmp_path / "pos.pt"
    torch.save(state, path)
    assert torch.load(path, weights_only=True) == state


def test_train_position_from_another_layout_is_refused_with_the_reason(tmp_path):
    shards = write_corpus(tmp_path, 2, 4, audio=False)
    kw = dict(mode="train", max_tokens=400, max_dur=8, rank=0, world_size=1)
    loader = build_loader(shards, num_workers=2, **kw)
    _take(loader, 3)
    state = loader.position(2)
    other = build_loader(shards, num_workers=1, **kw)
    assert other.position_mismatch(state) == "num_workers 2 -> 1"
    with pytest.raises(ValueError, match="num_workers 2 -> 1"):
        other.resume_from(state)
    fewer = build_loader(shards[:1], num_workers=2, **kw)
    assert "shards" in fewer.position_mismatch(state)


def test_datamodule_takes_the_first_train_shards_and_counts_their_utterances(tmp_path):
    """`max_train_shards=k`: a smaller fine-tuning set is the first k shards; `train_size` counts its utterances."""
    from metis.lightning.datamodule import ShardDataModule
    from tests.data.conftest import write_corpus

    paths = write_corpus(tmp_path, 3, 4, prefix="task")
    dm = ShardDataModule(train_shards=str(tmp_path), max_train_shards=2)
    dm.setup("fit")
    assert dm.train_shards == sorted(paths)[:2] and dm.train_size() == 8
    full = ShardDataModule(train_shards=str(tmp_path))
    full.setup("fit")
    assert full.train_size() == 12
    with pytest.raises(ValueError, match="max_train_shards=4 but .* has only 3 shards"):
        ShardDataModule(train_shards=str(tmp_path), max_train_shards=4).setup("fit")
