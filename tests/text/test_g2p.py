"""Routing, script segmentation, the trailing "_" rule and the errors of the front end."""

import pytest

from metis.text import G2P, G2PError, UnknownLanguageError, UnsupportedLanguageError, segment_by_script
from metis.text.g2p import script_class


@pytest.fixture(scope="module")
def g2p() -> G2P:
    return G2P()


@pytest.mark.parametrize(
    "ch, label",
    [("a", "en"), ("Z", "en"), ("中", "zh"), ("龥", "zh"), ("鿦", "other"), ("㐀", "other"), ("é", "other"),
     ("3", "other"), (" ", "other"), ("，", "other"), ("か", "other"), ("한", "other")],
)  # fmt: skip
def test_script_class(ch, label):
    assert script_class(ch) == label


@pytest.mark.parametrize(
    "text, segments",
    [
        ("我有3 apples.", [("我有3 ", "zh"), ("apples.", "en")]),
        ("Python3是…", [("Python3", "en"), ("是…", "zh")]),
        ("Hello，你好！", [("Hello，", "en"), ("你好！", "zh")]),
        ("I love 北京 very much.", [("I love ", "en"), ("北京 ", "zh"), ("very much.", "en")]),
        ("  12 hi", [("  12 hi", "en")]),
        ("123", [("123", "other")]),
        ("", [("", "")]),
    ],
)
def test_segment_by_script(text, segments):
    assert segment_by_script(text) == segments


def test_en_and_zh_codes_take_the_same_path(g2p):
    assert g2p("Hello world.", language="en") == g2p("Hello world.", language="zh")
    assert g2p("Hello world.", language="en") == ("h|ə|l|oʊ|_|w|ɜː|l|d|.|", [41, 57, 50, 23, 4, 48, 7, 50, 30, 1])


def test_trailing_word_boundary(g2p):
    # the plain cleaner keeps it, chn_eng_g2p drops it (and its id 4) after a final English segment
    assert g2p.cleaner_g2p("Hello there", "en") == ("h|ə|l|oʊ|_|ð|ɛɹ|_", [41, 57, 50, 23, 4, 36, 25, 4])
    assert g2p("Hello there", language="en") == ("h|ə|l|oʊ|_|ð|ɛɹ|", [41, 57, 50, 23, 4, 36, 25])
    assert g2p("It was a big dog", language="en")[0].endswith("ɡ|")


def test_newline_joins_two_symbols_into_one_dropped_piece(g2p):
    phonemes, ids = g2p("Hello\nworld.", language="en")
    assert phonemes == "h|ə|l|oʊ\nw|ɜː|l|d|.|"
    assert ids == [41, 57, 50, 7, 50, 30, 1]  # "oʊ" and "w" are lost, as in the reference


@pytest.mark.parametrize("text", ["123", "2024.", "!!!", "", "   "])
def test_text_without_letters_raises(g2p, text):
    with pytest.raises(UnknownLanguageError, match="Unknown language"):
        g2p(text, language="en")


def test_unsupported_and_unknown_languages(g2p):
    with pytest.raises(UnsupportedLanguageError, match="pyopenjtalk"):
        g2p("こんにちは、世界。", language="ja")
    with pytest.raises(UnsupportedLanguageError):
        g2p("hello", language="auto")
    with pytest.raises(UnknownLanguageError, match="'xx'"):
        g2p("hello", language="xx")
    assert issubclass(UnsupportedLanguageError, G2PError) and issubclass(UnsupportedLanguageError, NotImplementedError)


def test_french_splits_hyphenated_words(g2p):
    phonemes, _ = g2p("allez-vous", language="fr")
    assert phonemes == "a|l|e|_|v|u"
    assert not phonemes.endswith("|")  # the per-language cleaners add no trailing "|"
