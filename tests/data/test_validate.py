"""One sample check (metis/data/validate.py) for the loader, `tokenize`, `stats` and `prepare`: every bad
sample is left out and counted under the same reason, with its shard and key in the warning, and the
good samples all come through."""

import json
import logging

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from metis.data.__main__ import main
from metis.data.loader import build_loader
from metis.data.prepare import prepare
from metis.data.shards import ShardWriter, iter_tar, load_npy
from metis.data.stats import compute_stats
from metis.data.tokenize import tokenize
from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer
from tests.bad_audio import bad_wav_bytes, write_bad_wavs
from tests.data.conftest import flac, meta, sample, tone, write_corpus

GOOD = ("good0", "good1", "good2")
BAD_AUDIO = ("minus_one_int16", "dc", "clipped_flat", "nan", "silent")  # names in tests/bad_audio.py
# key -> reason of every bad sample of the shard below
EXPECTED = {"badjson": "bad_json", "notobject": "bad_json", "nofield": "missing_field", "nojson": "missing_field",
            "noaudio": "missing_field", "long600": "too_long", "mismatch": "duration_mismatch",
            "minus_one_int16": "clipped_audio", "dc": "constant_audio", "clipped_flat": "clipped_audio",
            "nan": "nan_audio", "silent": "silent_audio"}


def counts(expected: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in expected.values():
        out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items()))


def raw(key: str, dur: float, seed: int = 0) -> dict[str, bytes]:
    return sample(key, dur, sem=False, seed=seed)


def bad_shard(path) -> str:
    """3 good audio samples and one of each bad kind (no tokens: tokenize's input)."""
    with ShardWriter(path) as w:
        for i, k in enumerate(GOOD):
            w.write(k, raw(k, 1.5 + i / 2, seed=i))
        w.write("badjson", {**raw("badjson", 2.0), "json": b"{not json"})
        w.write("notobject", {**raw("notobject", 2.0), "json": b"[1, 2]"})
        w.write("nofield", {**raw("nofield", 2.0), "json": json.dumps({"id": "nofield", "text": "x", "duration": 2.0,
                                                                          "language": "en"}).encode()})  # no speaker
        w.write("nojson", {"flac": flac(tone(2.0))})
        w.write("noaudio", {"json": meta("noaudio", 2.0)})
        w.write("long600", {"flac": flac(tone(2.0)), "json": meta("long600", 600.0)})
        w.write("mismatch", {"flac": flac(tone(1.0)), "json": meta("mismatch", 2.0)})
        for k in BAD_AUDIO:
            w.write(k, {"wav": bad_wav_bytes(k, 1.0), "json": meta(k, 1.0)})
    return str(path)


def warned(caplog, shard: str) -> dict[str, str]:
    """key -> reason of each `skipped sample (reason) shard:key: ...` warning."""
    out = {}
    for r in caplog.records:
        msg = r.getMessage()
        if msg.startswith("skipped sample (") and f"{shard}:" in msg:
            reason = msg[len("skipped sample ("):msg.index(")")]
            out[msg.split(f"{shard}:", 1)[1].split(":", 1)[0]] = reason
    return out


@pytest.fixture(scope="module")
def kmeans():
    g = torch.Generator().manual_seed(0)
    return KMeansTokenizer.fit([torch.randn(32000, generator=g) * 0.1], KMeansConfig(n_clusters=8),
                               log=lambda *_: None)


def keys(path) -> list[str]:
    return sorted(s["__key__"] for s in iter_tar(str(path)) if s["__key__"] != "__tokenizer__")


def test_tokenize_leaves_out_and_counts_each_bad_sample(tmp_path, kmeans, caplog):
    shard = bad_shard(tmp_path / "raw" / "bad.tar")
    with caplog.at_level(logging.WARNING, logger="metis.data"):
        summary = tokenize(shard, tmp_path / "tok", kmeans, progress=False)
    assert summary["skipped"] == counts(EXPECTED)
    assert warned(caplog, shard) == EXPECTED  # each one named with its shard and key
    assert summary["samples"] == len(GOOD) and keys(tmp_path / "tok" / "bad.tar") == sorted(GOOD)
    # the token shard passes the loader's check whole
    loader = build_loader(str(tmp_path / "tok"), mode="val", max_tokens=2000, num_workers=0,
                          fields=("sem", "wav16"), tokenizer_identity=kmeans.identity())
    assert sorted(i for b in loader for i in b["id"]) == sorted(GOOD) and loader.skips.total == 0


def test_the_loader_counts_the_same_reasons(tmp_path):
    shard = bad_shard(tmp_path / "bad.tar")
    loader = build_loader(shard, mode="val", max_tokens=2000, num_workers=0, fields=("wav16",))
    assert sorted(i for b in loader for i in b["id"]) == sorted(GOOD)
    assert loader.skips.as_dict() == counts(EXPECTED)
    # the audio check's limits are the loader's to set: nothing counts as clipped at 1.0
    loader = build_loader(shard, mode="val", max_tokens=2000, num_workers=0, fields=("wav16",), max_clipped_fraction=1.0)
    assert sorted(i for b in loader for i in b["id"]) == sorted([*GOOD, "clipped_flat"])
    unclipped = {k: v for k, v in EXPECTED.items() if k != "clipped_flat"}
    assert loader.skips.as_dict() == counts({**unclipped, "minus_one_int16": "constant_audio"})  # -1.0 everywhere: DC


def test_stats_uses_only_the_good_samples(tmp_path, kmeans, caplog):
    shard = bad_shard(tmp_path / "bad.tar")
    good = tmp_path / "good.tar"
    with ShardWriter(good) as w:
        for s in iter_tar(shard):
            if s["__key__"] in GOOD:
                w.write(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
    with caplog.at_level(logging.WARNING, logger="metis.data"):
        summary = compute_stats(shard, kmeans, tmp_path / "bad.safetensors", progress=False)
    assert summary["skipped"] == counts(EXPECTED) and warned(caplog, shard) == EXPECTED
    clean = compute_stats(str(good), kmeans, tmp_path / "good.safetensors", progress=False)
    assert clean["skipped"] == {} and summary["frames"] == clean["frames"]
    a, b = load_file(str(tmp_path / "bad.safetensors")), load_file(str(tmp_path / "good.safetensors"))
    for k in ("mean", "var"):
        torch.testing.assert_close(a[k], b[k])  # nothing of the bad samples went in


def test_cli_tokenize_and_stats_print_the_counts_and_take_the_duration_limits(tmp_path, kmeans, capsys):
    shard = bad_shard(tmp_path / "raw" / "bad.tar")
    kmeans.save(tmp_path / "tk")
    spec = f"kmeans:{tmp_path / 'tk'}"
    assert main(["tokenize", shard, str(tmp_path / "tok"), "--tokenizer", spec, "--max-dur", "700"]) == 0
    out = capsys.readouterr().out
    want = {**EXPECTED}
    del want["long600"]  # within --max-dur 700: its json passes, its 2 s of audio then contradict the 600 s
    want["long600"] = "duration_mismatch"
    assert f"skipped: {json.dumps(counts(want))}" in out
    assert main(["tokenize", shard, str(tmp_path / "tok2"), "--tokenizer", spec, "--max-clipped-fraction", "1",
                 "--min-std", "0.3"]) == 0  # nothing counts as clipped; the good tones vary by ~0.15: "constant"
    out = capsys.readouterr().out
    loose = {**{k: v for k, v in EXPECTED.items() if k != "clipped_flat"}, "minus_one_int16": "constant_audio",
             **{k: "constant_audio" for k in (*GOOD, "mismatch")}}  # the audio check comes before the length check
    assert f"skipped: {json.dumps(counts(loose))}" in out and keys(tmp_path / "tok2" / "bad.tar") == ["clipped_flat"]
    assert main(["stats", shard, str(tmp_path / "st.safetensors"), "--features", spec, "--min-dur", "1.8"]) == 0
    out = capsys.readouterr().out
    # good0 (1.5 s) is now too short, and so are the 1 s bad-audio samples, before their audio is decoded
    short = {k: "too_short" for k in ("good0", *BAD_AUDIO)}
    assert f"skipped: {json.dumps(counts({**EXPECTED, **short}))}" in out


def test_prepare_counts_each_bad_file_by_name(tmp_path, caplog):
    src = tmp_path / "src"
    bad = write_bad_wavs(src / "bad", seconds=1.0)
    for i in range(3):
        sf.write(src / f"good{i}.wav", tone(1.0 + i / 4, seed=i), 16000, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="metis.data"):
        summary = prepare(src, tmp_path / "out", progress=False)
    assert summary["samples"] == 3
    want = {name: reason for name, (_, reason) in bad.items()}
    assert summary["skipped"] == counts(want)
    for name, (path, reason) in bad.items():
        assert any(f"({reason}) {path}:" in r.getMessage() for r in caplog.records), name
    written = [s for p in (tmp_path / "out").glob("*.tar") for s in iter_tar(str(p))]
    assert sorted(json.loads(s["json"])["id"] for s in written) == ["good0", "good1", "good2"]
    assert main(["prepare", str(src), str(tmp_path / "loose"), "--max-clipped-fraction", "1"]) == 0
    loose = json.loads((tmp_path / "loose" / "prepare.json").read_text())
    assert loose["samples"] == 4 and loose["skipped"] == counts({**{k: v for k, v in want.items() if k != "clipped_flat"},
                                                                 "minus_one_int16": "constant_audio"})


def test_good_samples_pass_everything_untouched(tmp_path, kmeans):
    shards = write_corpus(tmp_path / "raw", 2, 6, sem=False, identity=None)
    summary = tokenize(shards, tmp_path / "tok", kmeans, progress=False)
    assert summary["samples"] == 12 and summary["skipped"] == {}
    for src in shards:  # every member kept as it was, tokens added
        out = {s["__key__"]: s for s in iter_tar(str(tmp_path / "tok" / src.rsplit("/", 1)[1]))}
        for s in iter_tar(src):
            got = out[s["__key__"]]
            assert got["flac"] == s["flac"] and got["json"] == s["json"] and load_npy(got["sem.npy"]).size
    assert compute_stats(shards, kmeans, tmp_path / "st.safetensors", progress=False)["skipped"] == {}
    loader = build_loader(str(tmp_path / "tok"), mode="val", max_tokens=2000, num_workers=0,
                          fields=("sem", "wav16", "wav24"), tokenizer_identity=kmeans.identity())
    assert len([i for b in loader for i in b["id"]]) == 12 and loader.skips.total == 0
