"""English front end pieces: numbers, abbreviations, character clean-up, punctuation marking, merges, and
stage-by-stage parity with the reference trace (espeak-ng 1.51 for the espeak stage)."""

import json
from pathlib import Path

import pytest

from metis.text.english import TRAILING_BOUNDARY_CHARS, english_to_ipa, expand_abbreviations, normalize, special_map
from metis.text.espeak import clean_line, espeak_version, get_tokenizer, mark_punctuation
from metis.text.numbers import normalize_numbers

TRACE = Path(__file__).resolve().parents[1] / "fixtures" / "g2p_golden_trace.jsonl"


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234,567", "one million, two hundred thirty-four thousand, five hundred sixty-seven"),
        ("1,2,3", "one hundred twenty-three"),
        ("£20", "twenty pounds"),
        ("$5.99", "five dollars, ninety-nine cents"),
        ("$1", "one dollar"),
        ("$0.50", "fifty cents"),
        ("$0", "zero dollars"),
        ("$5.5", "five dollars, five cents"),
        ("1/2", "one half"),
        ("1/4", "one quarter"),
        ("3/2", "three halves"),
        ("3/4", "three quarters"),
        ("3/8", "three eighth"),
        ("12/25", "twelve twenty-fifth"),
        ("3.14159", "three point fourteen thousand, one hundred fifty-nine"),
        ("45%", "forty-five percent"),
        ("1st 21st", "first twenty-first"),
        ("1999", "nineteen ninety-nine"),
        ("1905", "nineteen oh five"),
        ("2024", "twenty twenty-four"),
        ("1900", "nineteen hundred"),
        ("2100", "twenty-one hundred"),
        ("2005", "two thousand five"),
        ("2000", "two thousand"),
        ("101", "one hundred one"),
        ("10000", "ten thousand"),
        ("MP3", "MP three"),
    ],
)
def test_numbers(text, expected):
    assert _words(normalize_numbers(text)) == expected


def test_abbreviations_keep_their_period_and_ignore_case():
    assert expand_abbreviations("Mr. Smith, Mrs. Brown, Main St.") == "mister. Smith, misess. Brown, Main saint."
    assert expand_abbreviations("Co-op etc. btw") == "company-op et cetera. by the way"
    assert expand_abbreviations("first stop") == "first stop"  # word-bounded


def test_clean_line_maps_and_deletes_punctuation():
    assert clean_line("  Hello！How are you？ ") == "Hello!How are you?"
    assert clean_line("‘a’、b；c：d。") == "'a',b;c:d."
    assert clean_line("wait... then⋯ so··· ok・・・") == "wait…then…so…ok…"
    assert clean_line('She said, "I (really) - 100% - do & go."') == "She said,I really 100 do go."
    assert clean_line("well-known  café") == "wellknown café"


def test_mark_punctuation():
    assert mark_punctuation("k|ɔ|f|i,p|l|iː|z.") == "k|ɔ|f|i|,|p|l|iː|z|."
    assert mark_punctuation("'k|ɜː") == "|'|k|ɜː"  # a leading "|" is kept
    assert mark_punctuation("s|t|ɑː|p!!!") == "s|t|ɑː|p|!|!|!"


def test_special_map_merges_whole_symbols_only():
    assert special_map("t|ɹ|iː|_|k|æ|t|s") == "tɹ|iː|_|k|æ|ts"
    assert special_map("ɐ|_|l|ɪ|ɾ|əl|_|ᵻ|x|ɬ|ʔ|n̩") == "ɚ|_|l|ɪ|ɾ|l|_|ɪ|k|l|t|n"
    assert special_map("ʃ|oː|ɹ|.") == "ʃ|oːɹ|."
    assert special_map("t|_|ɹ") == "t|_|ɹ"  # never across a word boundary
    assert special_map("dʒ|ɹ|aʊə|x") == "dʒ|ɹ|aʊə|k"  # "d" inside "dʒ" is not a whole symbol


def test_trailing_word_boundary_follows_the_last_raw_character():
    assert len(TRAILING_BOUNDARY_CHARS) == 30
    assert english_to_ipa("iPhone") == "aɪ|_|f|oʊ|n|_"
    assert english_to_ipa("dog") == "d|ɑː|ɡ"
    assert english_to_ipa("Hi.") == "h|aɪ|."


def _english_traces():
    cases = []
    for line in TRACE.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        stages = record["trace"]
        for i, stage in enumerate(stages):
            if stage["stage"] == "en.normalize(abbrev+numbers)":
                cases.append(pytest.param(stage, stages[i + 1], stages[i + 2], id=repr(stage["in"][:40])))
    return cases


@pytest.mark.parametrize("norm, espeak, smap", _english_traces())
def test_stages_match_the_trace(norm, espeak, smap):
    assert normalize(norm["in"]) == norm["out"]
    assert get_tokenizer("en-us").lines(norm["out"].strip()) == espeak["in"]
    assert special_map(smap["in"]) == smap["out"]
    if espeak_version() == (1, 51):
        assert get_tokenizer("en-us").raw(espeak["in"]) == espeak["out"]
        assert english_to_ipa(norm["in"]) == smap["out"]
