"""Mandarin pieces that need no reference data file: numbers, normalisation, jieba + merges, tone sandhi,
bopomofo -> symbols; plus the lexicon/polyphone path on a tiny hand-written lexicon, and resource errors."""

import json
from pathlib import Path

import pytest

from metis.text import G2P
from metis.text.mandarin import (
    MandarinG2P,
    MandarinResources,
    MissingMandarinResources,
    apply_sandhi,
    bopomofo_to_ipa,
    finalize,
    merge_words,
    normalize,
    number_to_chinese,
    split_words,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _zh_stages(name):
    cases = []
    for line in (FIXTURES / "g2p_golden_trace.jsonl").read_text(encoding="utf-8").splitlines():
        for stage in json.loads(line)["trace"]:
            if stage["stage"] == name:
                cases.append(pytest.param(stage["in"], stage["out"], id=repr(stage["in"][:20])))
    return cases


@pytest.mark.parametrize("text, expected", _zh_stages("zh.number_to_chinese"))
def test_numbers_match_the_trace(text, expected):
    assert number_to_chinese(text) == expected


@pytest.mark.parametrize("text, expected", _zh_stages("zh.normalization"))
def test_normalization_matches_the_trace(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", _zh_stages("zh.jieba.lcut"))
def test_jieba_matches_the_trace(text, expected):
    import jieba

    assert jieba.lcut(text) == expected


def test_number_quirks():
    assert number_to_chinese("1,000") == "一,零"
    assert number_to_chinese("2024-10-01") == "二千零二十四负十负一"
    assert number_to_chinese("10:30") == "十:三十"
    assert number_to_chinese("1/2") == "二分之一"


def test_normalize_punctuation_and_deletions():
    assert normalize("你好，世界。") == "你好,世界."
    assert normalize("他说：“我来”！（真的）？；、‘’") == "他说:我来!真的?;,''"
    assert normalize("我……不 知道...") == "我……不知道…"
    assert normalize("我有3个apple") == "我有个"


def test_word_merges():
    assert merge_words(["看", "一", "看", ","]) == ["看一看", ","]
    assert merge_words(["一", "本书"]) == ["一本书"]
    assert merge_words(["不", "知道"]) == ["不知道"]
    assert merge_words(["小孩", "儿", "在"]) == ["小孩儿", "在"]
    assert split_words("看一看,试一试.") == ["看一看", ",", "试一试", "."]


@pytest.mark.parametrize(
    "word, syllables, expected",
    [
        ("你好", ["ㄋㄧˇ", "ㄏㄠˇ"], ["ㄋㄧˊ", "ㄏㄠˇ"]),
        ("展览馆", ["ㄓㄢˇ", "ㄌㄢˇ", "ㄍㄨㄢˇ"], ["ㄓㄢˇˊ", "ㄌㄢˇˊ", "ㄍㄨㄢˇ"]),  # the 3-3-3 bug
        ("不是", ["ㄅㄨˋ", "ㄕˋ"], ["ㄅㄨˊ", "ㄕˋ"]),
        ("不知道", ["ㄅㄨˋ", "ㄓ", "ㄉㄠˋ"], ["ㄅㄨˋ", "ㄓ", "ㄉㄠˋ"]),
        ("好不好", ["ㄏㄠˇ", "ㄅㄨˋ", "ㄏㄠˇ"], ["ㄏㄠˇ", "ㄅㄨ˙", "ㄏㄠˇ"]),
        ("看一看", ["ㄎㄢˋ", "ㄧ", "ㄎㄢˋ"], ["ㄎㄢˋ", "ㄧ˙", "ㄎㄢˋ"]),
        ("一个", ["ㄧ", "ㄍㄜˋ"], ["ㄧˊ", "ㄍㄜˋ"]),
        ("一天", ["ㄧ", "ㄊㄧㄢ"], ["ㄧˋ", "ㄊㄧㄢ"]),
        ("一年", ["ㄧ", "ㄋㄧㄢˊ"], ["ㄧˋ", "ㄋㄧㄢˊ"]),
        ("一日", ["ㄧ", "ㄖˋ"], ["ㄧ", "ㄖˋ"]),
        ("第一", ["ㄉㄧˋ", "ㄧ"], ["ㄉㄧˋ", "ㄧ"]),
        ("二十一", ["ㄦˋ", "ㄕˊ", "ㄧ"], ["ㄦˋ", "ㄕˊ", "ㄧ"]),
        ("一九四九年", ["ㄧ", "ㄐㄧㄡˇ", "ㄙˋ", "ㄐㄧㄡˇ", "ㄋㄧㄢˊ"], ["ㄧ", "ㄐㄧㄡˇ", "ㄙˋ", "ㄐㄧㄡˇ", "ㄋㄧㄢˊ"]),
        ("一,", ["ㄧ", ","], ["ㄧ", ","]),
        ("玩儿", ["ㄨㄢˊ", "ㄦˊ"], ["ㄨㄢˊ", "ㄦ˙"]),
        ("女儿", ["ㄋㄩˇ", "ㄦˊ"], ["ㄋㄩˇ", "ㄦˊ"]),
        ("我很好", ["ㄨㄛˇ", "ㄏㄣˇ", "ㄏㄠˇ"], ["ㄨㄛˇˊ", "ㄏㄣˇˊ", "ㄏㄠˇ"]),
    ],
)
def test_tone_sandhi(word, syllables, expected):
    assert apply_sandhi(word, syllables) == expected


@pytest.mark.parametrize(
    "bopomofo, expected",
    [
        ("ㄋㄧˊ|ㄏㄠˇ|,|ㄕˋ|ㄐㄧㄝˋ|.", "n|i↑|x|ɑʊ↓↑|,|s`ɹ↓|tʃ⁼|iɛ↓|."),
        ("ㄊㄧㄢ|ㄨㄛˇ|ㄩㄥˋ", "tʰ|jɛn→|uo↓↑|jʊŋ↓"),  # unmarked syllables are tone 1; no-initial syllables
        ("ㄇㄛˊ|ㄅㄛ|ㄆㄛˇ|ㄈㄛˋ", "mwo↑|p⁼wo→|pʰwo↓↑|fwo↓"),  # bo/po/mo/fo: one token
        ("ㄓ|ㄔˊ|ㄖˋ|ㄙˇ|ㄗˋ|ㄘˉ", "ts`⁼ɹ→|ts`ʰɹ↑|ɹ`ɹ↓|sɹ↓↑|ts⁼ɹ↓|tsʰɹ→"),  # apical vowels
        ("ㄧˋ|ㄙ˙|ㄖˋ|ㄗ˙", "i↓|s|ɹ`ɹ↓|ts⁼"),  # neutral tone loses the apical vowel
        ("ㄇㄣ˙|ㄉㄜ˙|ㄦ˙", "m|ən|t⁼|ə|əɹ"),  # neutral finals are toneless
        ("ㄓㄢˇˊ|ㄌㄢˇˊ|ㄍㄨㄢˇ", "ts`⁼|an↓↑|↑|l|an↓↑|↑|k⁼|uan↓↑"),
        ("ㄨㄛˇ|…|…|ㄅㄨˋ", "uo↓↑|…|…|p⁼|u↓"),
        ("ㄒㄩㄝˊ|ㄩㄢˊ|ㄩㄣˊ|ㄧㄠˋ|ㄧㄡˇ|ㄧㄤˊ", "ʃ|ɥɛ↑|ɥæn↑|ɥn↑|iɑʊ↓|ioʊ↓↑|iɑŋ↑"),
        ("ㄨㄞˋ|ㄨㄟˋ|ㄨㄣˊ|ㄨㄤˊ|ㄨㄚˊ|ㄧㄚˋ", "uaɪ↓|ueɪ↓|uən↑|uɑŋ↑|ua↑|ia↓"),
    ],
)
def test_bopomofo_to_symbols(bopomofo, expected):
    assert bopomofo_to_ipa(bopomofo) == expected


def test_finalize_cleans_and_marks_punctuation():
    assert finalize("|uo↓↑||m|ən|||i↓||.") == "uo↓↑|m|ən|i↓|."
    assert finalize("x|ə↑|“|《|!") == "x|ə↑|!"


def _replay_records():
    """Mandarin/mixed records whose Mandarin part is replayed from the trace's bopomofo."""
    trace = {}
    for line in (FIXTURES / "g2p_golden_trace.jsonl").read_text(encoding="utf-8").splitlines():
        t = json.loads(line)
        trace[t["text"]] = [s["out"] for s in t["trace"] if s["stage"] == "zh.chinese_to_bopomofo"]
    cases = []
    for line in (FIXTURES / "g2p_golden.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if not r.get("error") and any(label == "zh" for _, label in r.get("segments") or []):
            cases.append(pytest.param(r, trace[r["text"]], id=repr(r["text"][:20])))
    return cases


class _ReplayMandarin:
    """Test double for the data-file part: returns the reference's bopomofo for each zh segment in turn."""

    def __init__(self, bopomofo):
        self._bopomofo = iter(bopomofo)

    def __call__(self, text):
        return bopomofo_to_ipa(next(self._bopomofo))


@pytest.mark.parametrize("record, bopomofo", _replay_records())
def test_symbols_and_assembly_given_the_reference_bopomofo(record, bopomofo):
    g2p = G2P(mandarin=_ReplayMandarin(bopomofo))
    assert g2p(record["text"], language=record["language"]) == (record["phonemes"], record["ids"])


# A few lexicon lines as in chinese_lexicon.txt, and the pinyin -> bopomofo rows they need.
_LEXICON = {
    "你好": ["ni3", "hao3"], "世界": ["shi4", "jie4"], "银行": ["yin2", "hang2"], "行长": ["hang2", "zhang3"],
    "正在": ["zheng4", "zai4"], "行走": ["xing2", "zou3"], "的": ["de5"], "行": ["xing2"], "你": ["ni3"],
}  # fmt: skip
_BOPOMOFO = {
    "ni": "ㄋㄧ", "hao": "ㄏㄠ", "shi": "ㄕ", "jie": "ㄐㄧㄝ", "yin": "ㄧㄣ", "hang": "ㄏㄤ", "zhang": "ㄓㄤ",
    "zheng": "ㄓㄥ", "zai": "ㄗㄞ", "xing": "ㄒㄧㄥ", "zou": "ㄗㄡ", "de": "ㄉㄜ",
}  # fmt: skip


def test_lexicon_and_polyphone_path():
    queries = []

    def polyphone(text, index):
        queries.append((text, index, text[index]))
        return "de5"

    mandarin = MandarinG2P(_LEXICON, _BOPOMOFO, polychars="的行长", polyphone=polyphone)
    g2p = G2P(mandarin=mandarin)
    assert g2p("你好，世界。", language="zh") == ("n|i↑|x|ɑʊ↓↑|,|s`ɹ↓|tʃ⁼|iɛ↓|.|", [45, 271, 81, 239, 0, 297, 82, 154, 1])
    # a multi-character lexicon word wins over its polyphonic characters; a lone polyphonic one asks the model
    phonemes, ids = g2p("银行的行长正在行走。", language="zh")
    assert phonemes == "in↑|x|ɑŋ↑|t⁼|ə|x|ɑŋ↑|ts`⁼|ɑŋ↓↑|ts`⁼|əŋ↓|ts⁼|aɪ↓|ʃ|iŋ↑|ts⁼|oʊ↓↑|.|"
    assert ids == [122, 81, 257, 77, 57, 81, 257, 84, 258, 84, 264, 88, 231, 39, 132, 88, 243, 1]
    assert queries == [("银行的行长正在行走.", 2, "的")]


def test_unknown_character_passes_through_and_is_dropped():
    mandarin = MandarinG2P(_LEXICON, _BOPOMOFO, polychars="", polyphone=lambda text, index: "de5")
    assert mandarin("你龘") == "n|i↓↑|龘"
    assert G2P(mandarin=mandarin)("你龘", language="zh")[1] == [45, G2P().vocab["i↓↑"]]


def test_missing_resources_raise_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("METIS_CHINESE_LEXICON", raising=False)
    monkeypatch.delenv("METIS_POLY_BERT_ONNX", raising=False)
    with pytest.raises(MissingMandarinResources, match="METIS_CHINESE_LEXICON"):
        MandarinResources.resolve()
    with pytest.raises(MissingMandarinResources, match="chinese_lexicon.txt"):
        G2P()("你好", language="zh")
    assert G2P()("Hello", language="en")[0] == "h|ə|l|oʊ|"  # English needs no Mandarin data
    lexicon = tmp_path / "chinese_lexicon.txt"
    lexicon.write_text("你好\tni3 hao3\n", encoding="utf-8")
    onnx = tmp_path / "model" / "poly_bert_model.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"")
    with pytest.raises(MissingMandarinResources, match="pinyin_2_bpmf.txt.*polydict.json.*vocab.txt"):
        MandarinResources.resolve(lexicon, onnx)
