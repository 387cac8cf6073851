import json

import pytest

from metis.eval.protocols import (Item, read_dns2020, read_folder, read_libri2mix, read_manifest, read_seedtts,
                                  write_manifest)


def touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def test_manifest_round_trip_and_errors(tmp_path):
    items = [Item(id="a", wav=tmp_path / "a.wav", text="hi", prompt=tmp_path / "p.wav", subset="x"),
             Item(id="b", wav=tmp_path / "b.wav")]
    write_manifest(items, tmp_path / "m.jsonl")
    assert read_manifest(tmp_path / "m.jsonl") == items
    (tmp_path / "rel.jsonl").write_text(json.dumps({"wav": "gen/c.wav", "reference": "ref/c.wav"}) + "\n")
    (c,) = read_manifest(tmp_path / "rel.jsonl")
    assert c.id == "c" and c.wav == tmp_path / "gen/c.wav" and c.reference == tmp_path / "ref/c.wav"
    (tmp_path / "bad.jsonl").write_text('{"text": "no wav"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'wav'"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"wav": "a.wav"}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        read_manifest(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_manifest(tmp_path / "missing.jsonl")


def test_folder(tmp_path):
    touch(tmp_path / "gen/u1.wav")
    (tmp_path / "gen/u1.txt").write_text("hello there\n")
    touch(tmp_path / "gen/u2.wav")
    touch(tmp_path / "ref/u1.wav")
    items = read_folder(tmp_path / "gen", reference_dir=tmp_path / "ref")
    assert [(i.id, i.text, i.reference) for i in items] == [("u1", "hello there", tmp_path / "ref/u1.wav"),
                                                            ("u2", None, None)]
    with pytest.raises(FileNotFoundError, match="no .wav"):
        read_folder(tmp_path / "ref2")


def test_seedtts_meta(tmp_path):
    meta = tmp_path / "en" / "meta.lst"
    meta.parent.mkdir()
    meta.write_text("u1|prompt text one|prompt-wavs/p1.wav|Target text one.\n"
                    "u2|prompt two|prompt-wavs/p2.wav|Target two.|wavs/u2.wav\n")
    tts = read_seedtts(meta, tmp_path / "gen")
    assert [i.id for i in tts] == ["u1", "u2"]
    assert tts[0].wav == tmp_path / "gen/u1.wav" and tts[0].prompt == meta.parent / "prompt-wavs/p1.wav"
    assert tts[0].text == "Target text one." and tts[0].lang == "en" and tts[0].input is None
    assert tts[0].subset == "en"
    with pytest.raises(ValueError, match=r"meta.lst:1: VC needs the 5th field"):
        read_seedtts(meta, tmp_path / "gen", task="vc")
    zh = tmp_path / "zh" / "meta.lst"
    zh.parent.mkdir()
    zh.write_text("z1|提示|p.wav|目标|wavs/z1.wav\n")
    (v,) = read_seedtts(zh, tmp_path / "gen", task="vc")
    assert v.lang == "zh" and v.input == zh.parent / "wavs/z1.wav"
    meta.write_text("only|three|fields\n")
    with pytest.raises(ValueError, match="expected 4 or 5"):
        read_seedtts(meta, tmp_path / "gen")


def test_dns2020_layout(tmp_path):
    root = tmp_path / "test_set"
    for cond in ("no_reverb", "with_reverb"):
        touch(root / f"synthetic/{cond}/noisy/clnsp1_fileid_{7 if cond == 'no_reverb' else 8}.wav")
        touch(root / f"synthetic/{cond}/clean/clean_fileid_{7 if cond == 'no_reverb' else 8}.wav")
    touch(root / "real_recordings/ms_realrec_1.wav")
    gen = tmp_path / "enh"
    touch(gen / "synthetic/no_reverb/noisy/clnsp1_fileid_7.wav")  # nested like the test set
    touch(gen / "clnsp1_fileid_8.wav")  # flat
    items = read_dns2020(root, gen)
    assert [(i.subset, i.wav.is_file(), i.reference is not None) for i in items] == [
        ("no_reverb", True, True), ("with_reverb", True, True), ("real_recordings", False, False)]
    assert items[0].reference.name == "clean_fileid_7.wav" and items[0].input.parent.name == "noisy"
    with pytest.raises(FileNotFoundError, match="no DNS 2020 test files"):
        read_dns2020(tmp_path / "nothing", gen)


def test_libri2mix_layout(tmp_path):
    root = tmp_path / "Libri2Mix/wav16k/min"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata/mixture_test_mix_clean.csv").write_text(
        "mixture_ID,mixture_path,source_1_path,source_2_path,length\n"
        "61-70968-0000_121-121726-0001,test/mix_clean/61-70968-0000_121-121726-0001.wav,"
        "test/s1/61-70968-0000_121-121726-0001.wav,"
        "/elsewhere/Libri2Mix/wav16k/min/test/s2/61-70968-0000_121-121726-0001.wav,1000\n")
    ls = tmp_path / "LibriSpeech/test-clean/121/121726"
    ls.mkdir(parents=True)
    (ls / "121-121726.trans.txt").write_text("121-121726-0001 HELLO THERE\n")
    (tmp_path / "LibriSpeech/test-clean/61/70968").mkdir(parents=True)
    (tmp_path / "LibriSpeech/test-clean/61/70968/61-70968.trans.txt").write_text("61-70968-0000 FIRST ONE\n")
    (tmp_path / "enroll.tsv").write_text("61-70968-0000_121-121726-0001\ts2\tenroll/121-0002.wav\n")
    (item,) = read_libri2mix(root, tmp_path / "out", enrollment=tmp_path / "enroll.tsv",
                             librispeech=tmp_path / "LibriSpeech")
    assert item.text == "HELLO THERE" and item.reference == root / "test/s2/61-70968-0000_121-121726-0001.wav"
    assert item.prompt == tmp_path / "enroll/121-0002.wav" and item.wav == tmp_path / "out" / f"{item.id}.wav"
    (default,) = read_libri2mix(root, tmp_path / "out", librispeech=tmp_path / "LibriSpeech")
    assert default.text == "FIRST ONE" and default.prompt is None
    assert default.input == root / "test/mix_clean/61-70968-0000_121-121726-0001.wav"
    (tmp_path / "bad.tsv").write_text("x\ts3\ty.wav\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1"):
        read_libri2mix(root, tmp_path / "out", enrollment=tmp_path / "bad.tsv")
    with pytest.raises(FileNotFoundError, match="mixture_test_mix_both.csv"):
        read_libri2mix(root, tmp_path / "out", mix="mix_both")
