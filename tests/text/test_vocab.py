"""Phone vocabulary: the packaged copy, lookups, and the reference's silent dropping of unknown pieces."""

import json
from pathlib import Path

import pytest

from metis.text import PHONE_EMBEDDING_ROWS, PHONE_PAD_ID, VOCAB_SIZE, PhoneVocab

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def vocab() -> PhoneVocab:
    return PhoneVocab.load()


def test_packaged_vocab_is_the_reference_one(vocab):
    reference = json.loads((FIXTURES / "phone_vocab.json").read_text(encoding="utf-8"))["vocab"]
    assert vocab.symbols == reference
    assert len(vocab) == VOCAB_SIZE == 363
    assert PhoneVocab.load(FIXTURES / "phone_vocab.json").symbols == reference


def test_punctuation_and_boundary_ids(vocab):
    expected = {",": 0, ".": 1, "?": 2, "!": 3, "_": 4, ":": 359, ";": 360, "'": 361, "…": 362}
    assert {s: vocab[s] for s in expected} == expected


def test_look_alike_symbols_are_distinct(vocab):
    assert vocab["ç"] == 68 and vocab["c\u0327"] == 323  # U+00E7 vs c + combining cedilla
    assert vocab["ɡ"] == 32 and vocab["g"] == 327  # U+0261 (espeak) vs ASCII
    assert vocab["\u0303"] == 357  # a bare combining tilde


def test_pad_id_is_outside_the_vocabulary(vocab):
    assert PHONE_PAD_ID == 1023 and PHONE_EMBEDDING_ROWS == 1024
    assert max(vocab.symbols.values()) < PHONE_PAD_ID
    with pytest.raises(KeyError, match="1023"):
        vocab.symbol(PHONE_PAD_ID)


def test_encode_drops_unknown_pieces_silently(vocab):
    # empty pieces from leading/trailing "|", the 3-3-3 stray "↑", a newline-joined piece, French nasal vowel
    assert vocab.encode("|'|k|an↓↑|↑|oʊ\nw|ɛ̃|.|") == [361, 31, vocab["an↓↑"], 1]
    assert vocab.unknown_pieces("|'|k|an↓↑|↑|oʊ\nw|ɛ̃|.|") == ["↑", "oʊ\nw", "ɛ̃"]


def test_encode_reads_only_up_to_the_first_tab(vocab):
    assert vocab.encode("h|aɪ\t.|!") == [41, 20]


def test_lookup_errors_name_the_symbol(vocab):
    with pytest.raises(KeyError, match="ɛ̃"):
        vocab["ɛ̃"]
    assert vocab.decode([41, 20, 1]) == "h|aɪ|."


def test_invalid_vocabulary_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="contiguous"):
        PhoneVocab({"a": 0, "b": 2})
    bad = tmp_path / "v.json"
    bad.write_text('{"symbols": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match="'vocab'"):
        PhoneVocab.load(bad)
