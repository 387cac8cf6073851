"""English text -> phoneme string, as the reference ``english_to_ipa`` (docs/reference.md §9.5).

Pipeline: abbreviations (docs/reference.md §9.5.1) -> numbers (docs/reference.md §9.5.2) -> the espeak tokenizer (docs/reference.md §9.5.3–§9.5.4) -> trailing word boundary
(docs/reference.md §9.5.5) -> symbol merges (docs/reference.md §9.5.6). The returned string keeps the trailing ``|_`` when the raw espeak string ends in
one of :data:`TRAILING_BOUNDARY_CHARS`; :func:`metis.text.g2p.chn_eng_g2p` removes it again for pure English.
"""

from __future__ import annotations

import re

from metis.text.espeak import get_tokenizer
from metis.text.numbers import normalize_numbers

__all__ = [
    "ABBREVIATIONS",
    "TRAILING_BOUNDARY_CHARS",
    "SPECIAL_MAP",
    "expand_abbreviations",
    "normalize",
    "special_map",
    "english_to_ipa",
]

# Applied in this order, word-bounded and case-insensitive; the period after them is kept (quirk 7).
ABBREVIATIONS = [
    ("mrs", "misess"),
    ("mr", "mister"),
    ("dr", "doctor"),
    ("st", "saint"),
    ("co", "company"),
    ("jr", "junior"),
    ("maj", "major"),
    ("gen", "general"),
    ("drs", "doctors"),
    ("rev", "reverend"),
    ("lt", "lieutenant"),
    ("hon", "honorable"),
    ("sgt", "sergeant"),
    ("capt", "captain"),
    ("esq", "esquire"),
    ("ltd", "limited"),
    ("col", "colonel"),
    ("ft", "fort"),
    ("etc", "et cetera"),
    ("btw", "by the way"),
]
_ABBREVIATION_PATTERNS = [(re.compile(rf"\b{abbr}\b", re.IGNORECASE), expansion) for abbr, expansion in ABBREVIATIONS]

# A raw espeak string ending in one of these gets "|_" appended (docs/reference.md §9.5.5 step 4); the backtick is U+0060.
TRAILING_BOUNDARY_CHARS = frozenset("p⁼ʰmftnlkxʃs`ɹaoəɛɪeɑʊŋiuɥwæjː")

# (symbols to match, replacement), applied in order, each until it no longer matches (docs/reference.md §9.5.6).
SPECIAL_MAP = [
    ("t|ɹ", "tɹ"),
    ("d|ɹ", "dɹ"),
    ("t|s", "ts"),
    ("d|z", "dz"),
    ("ɪ|ɹ", "ɪɹ"),
    ("ɐ", "ɚ"),
    ("ᵻ", "ɪ"),
    ("əl", "l"),
    ("x", "k"),
    ("ɬ", "l"),
    ("ʔ", "t"),
    ("n̩", "n"),
    ("oː|ɹ", "oːɹ"),
]
# A match must form whole symbols: string edge, "|" or "_" on both sides.
_SPECIAL_PATTERNS = [
    (re.compile(rf"(?<![^|_]){re.escape(symbols)}(?![^|_])"), replacement) for symbols, replacement in SPECIAL_MAP
]


def expand_abbreviations(text: str) -> str:
    for pattern, expansion in _ABBREVIATION_PATTERNS:
        text = pattern.sub(expansion, text)
    return text


def normalize(text: str) -> str:
    """Abbreviations then numbers; no case folding, no transliteration (docs/reference.md §9.5.1–§9.5.2)."""
    return normalize_numbers(expand_abbreviations(text))


def special_map(phonemes: str) -> str:
    """Merge clusters and replace rare symbols (docs/reference.md §9.5.6)."""
    for pattern, replacement in _SPECIAL_PATTERNS:
        while True:
            phonemes, count = pattern.subn(replacement, phonemes)
            if count == 0:
                break
    return phonemes


def english_to_ipa(text: str) -> str:
    """The English cleaner: ``|``-separated phones, ``_`` between words, possibly ending in ``|_``."""
    phonemes = get_tokenizer("en-us")(normalize(text).strip())
    if phonemes and phonemes[-1] in TRAILING_BOUNDARY_CHARS:
        phonemes += "|_"
    return special_map(phonemes)
