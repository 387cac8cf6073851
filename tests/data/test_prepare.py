import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metis.data.__main__ import main
from metis.data.loader import build_loader
from metis.data.prepare import discover, prepare, split_points
from metis.data.shards import iter_tar
from tests.data.conftest import tone

from tests import SHARED_AUDIO


def read_all(out_dir):
    samples = []
    for p in sorted(Path(out_dir).glob("*.tar")):
        for s in iter_tar(str(p)):
            samples.append((p.name, s))
    return samples


def test_folder_with_transcripts_stereo_resample_and_split(tmp_path):
    src = tmp_path / "src"
    for spk in ("alice", "bob"):
        (src / spk).mkdir(parents=True)
        for i in range(3):
            sf.write(src / spk / f"u{i}.wav", tone(1.0 + i, 16000, seed=i), 16000)
            (src / spk / f"u{i}.txt").write_text(f"  hello {spk}\n number {i} ")
    stereo = np.stack([tone(2.0, 44100), tone(2.0, 44100, seed=3)], 1)
    sf.write(src / "alice" / "stereo.flac", stereo, 44100)
    (src / "alice" / "stereo.lab").write_text("stereo text")
    long = np.concatenate([tone(4.0, 16000), np.zeros(1600, np.float32), tone(4.0, 16000, seed=1)] * 2)
    sf.write(src / "bob" / "long.wav", long, 16000)
    sf.write(src / "bob" / "tiny.wav", tone(0.2, 16000), 16000)
    summary = prepare(src, tmp_path / "out", max_dur=6.0, min_dur=0.5, max_count=3, seed=0, progress=False)
    assert summary["layout"] == "folder" and summary["skipped"] == {"too_short": 1}
    samples = read_all(tmp_path / "out")
    metas = {json.loads(s["json"])["id"]: (name, s) for name, s in samples}
    pieces = sorted((json.loads(s["json"]) for _, s in samples if json.loads(s["json"])["id"].startswith("bob_long_seg")),
                    key=lambda p: p["segment"][0])
    assert len(pieces) >= 3  # 16.2 s in pieces ≤ 6 s
    assert summary["samples"] == len(samples) == 6 + 1 + len(pieces)
    assert summary["shards"] == -(-len(samples) // 3) and summary["speakers"] == 2
    assert 4.0 <= pieces[0]["segment"][1] <= 4.1  # the first cut falls in the first pause
    m = json.loads(metas["alice_u1"][1]["json"])
    assert m["text"] == "hello alice number 1" and m["speaker"] == "alice" and m["duration"] == 2.0
    st = metas["alice_stereo"][1]
    wav, sr = sf.read(__import__("io").BytesIO(st["flac"]))
    assert sr == 24000 and wav.ndim == 1 and abs(len(wav) - 48000) <= 2  # mono, 44.1k -> 24k
    assert json.loads(st["json"])["text"] == "stereo text"
    assert all(p["duration"] <= 6.0 and p["text"] == "" for p in pieces)
    assert sum(p["duration"] for p in pieces) == pytest.approx(len(long) / 16000, abs=1e-3)
    # shuffled across shards: a speaker's files are not all in one shard
    assert len({metas[f"alice_u{i}"][0] for i in range(3)} | {metas[f"bob_u{i}"][0] for i in range(3)}) > 1
    # the loader reads prepared (audio-only) shards
    loader = build_loader(str(tmp_path / "out"), mode="val", fields=("wav16",), max_tokens=1000, num_workers=0,
                          max_dur=10)
    assert sum(len(b["id"]) for b in loader) == len(samples)
    # idempotent
    assert prepare(src, tmp_path / "out", progress=False)["already_done"]


def test_split_points_cut_at_quiet_frames():
    sr = 16000
    wav = np.concatenate([tone(5.0, sr), np.zeros(sr // 2, np.float32), tone(5.0, sr)])
    (a, b), (c, d) = split_points(wav, sr, 8.0)
    assert a == 0 and d == len(wav) and b == c
    assert 5.0 * sr <= b <= 5.5 * sr  # inside the silence


def test_manifest_and_librispeech_and_libritts_layouts(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    sf.write(d / "a.wav", tone(1.5), 16000)
    (d / "m.csv").write_text("path,text,speaker,emotion\na.wav,csv text,s9,happy\n")
    (d / "m.jsonl").write_text(json.dumps({"path": "a.wav", "text": "j", "speaker": "s1", "id": "x1"}) + "\n")
    layout, src = discover(d / "m.csv")
    assert layout == "manifest" and src[0].text == "csv text" and src[0].speaker == "s9"
    assert src[0].extra == {"emotion": "happy"}
    assert discover(d / "m.jsonl")[1][0].id == "x1"
    (d / "bad.jsonl").write_text('{"text": "no path"}\n')
    with pytest.raises(ValueError, match="row 1: missing field 'path'"):
        discover(d / "bad.jsonl")

    ls = tmp_path / "LibriSpeech" / "19" / "198"
    ls.mkdir(parents=True)
    sf.write(ls / "19-198-0000.flac", tone(1.0), 16000)
    (ls / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n")
    layout, src = discover(tmp_path / "LibriSpeech")
    assert layout == "librispeech" and src[0].text == "NORTHANGER ABBEY" and src[0].speaker == "19"

    lt = tmp_path / "LibriTTS" / "84" / "121123"
    lt.mkdir(parents=True)
    sf.write(lt / "84_121123_000007_000001.wav", tone(1.0, 24000), 24000)
    (lt / "84_121123_000007_000001.normalized.txt").write_text("Go, do you hear?")
    layout, src = discover(tmp_path / "LibriTTS")
    assert layout == "libritts" and src[0].text == "Go, do you hear?" and src[0].speaker == "84"
    with pytest.raises(ValueError, match="no audio found"):
        discover(tmp_path / "LibriTTS" / "84" / "121123", layout="librispeech")


def test_cli_prepare(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "a.wav", tone(1.0), 16000)
    assert main(["prepare", str(src), str(tmp_path / "out"), "--shard-samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "prepare summary" in out and "samples: 1" in out


@pytest.mark.skipif(not SHARED_AUDIO.is_dir(), reason=f"real speech folder {SHARED_AUDIO} absent (fresh clone)")
def test_real_libritts_clips(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in SHARED_AUDIO.glob("libritts_*"):
        os.symlink(p, src / p.name)
    summary = prepare(src, tmp_path / "out", progress=False)
    assert summary["samples"] == 4
    for _, s in read_all(tmp_path / "out"):
        m = json.loads(s["json"])
        assert m["sample_rate"] == 24000 and m["text"] and 2.9 < m["duration"] < 3.8
