"""The MaskGCT/Metis text front end: text + language code -> (phoneme string, phone ids) (docs/reference.md §9.1, §9.3, §9.4).

Routing as the reference helper: "en" and "zh" go through :meth:`G2P.chn_eng_g2p` (script segmentation, the
language code is then ignored); "fr", "de" and "ko" go through espeak with that language's cleaner; "ja" and
"auto" are not implemented and raise :class:`UnsupportedLanguageError`.

Example::

    g2p = G2P()
    phones, ids = g2p("Hello world.", language="en")   # "h|ə|l|oʊ|_|w|ɜː|l|d|.|", [41, 57, ...]
"""

from __future__ import annotations

import re
from pathlib import Path

from metis.text import english
from metis.text.espeak import ESPEAK_LANGUAGES, get_tokenizer
from metis.text.mandarin import MandarinG2P, MandarinResources, MissingMandarinResources
from metis.text.vocab import PhoneVocab

__all__ = [
    "G2P",
    "G2PError",
    "UnknownLanguageError",
    "UnsupportedLanguageError",
    "MissingMandarinResources",
    "CHN_ENG_LANGUAGES",
    "CLEANER_LANGUAGES",
    "script_class",
    "segment_by_script",
]

CHN_ENG_LANGUAGES = frozenset({"zh", "en"})
CLEANER_LANGUAGES = frozenset({"en", "zh", "fr", "de", "ko"})  # per-language cleaners this module implements


class G2PError(ValueError):
    """Base class of the front end's input errors."""


class UnknownLanguageError(G2PError):
    """No cleaner for this language; also raised for text without any CJK or ASCII letter (quirk 1).

    The reference crashes with "Unknown language" on such inputs ("123", "!!!", "", whitespace); the released
    model never saw them, so this front end raises too rather than inventing a reading.
    """


class UnsupportedLanguageError(G2PError, NotImplementedError):
    """A language the reference handles with tools this project does not implement (ja, auto)."""


# ---------------------------------------------------------------------------------------------------------------
# Script segmentation (docs/reference.md §9.3)


def script_class(ch: str) -> str:
    """``"zh"`` for U+4E00-U+9FA5, ``"en"`` for ASCII letters, ``"other"`` for everything else."""
    if "\u4e00" <= ch <= "\u9fa5":
        return "zh"
    if ("a" <= ch <= "z") or ("A" <= ch <= "Z"):
        return "en"
    return "other"


def segment_by_script(text: str) -> list[tuple[str, str]]:
    """Split mixed text into ``(text, label)`` segments; digits, spaces and punctuation join the segment on their
    left, leading ones join the first zh/en segment. Text without zh/en keeps the label ``"other"``; the empty
    string gives ``[("", "")]``.
    """
    segments: list[list[str]] = []
    for ch in text:
        label = script_class(ch)
        if not segments:
            segments.append([ch, label])
        elif segments[-1][1] == "other":
            segments[-1][0] += ch
            if label != "other":
                segments[-1][1] = label
        elif label in ("other", segments[-1][1]):
            segments[-1][0] += ch
        else:
            segments.append([ch, label])
    if not segments:
        return [("", "")]
    return [(seg, label) for seg, label in segments]


# ---------------------------------------------------------------------------------------------------------------
# The cleaners for fr/de/ko (docs/reference.md §9.10, "only in outline"). What the fixtures show: French splits hyphenated words
# ("allez-vous" -> "allez vous"); German and Korean text goes to espeak as it is (espeak reads the digits).

_FR_HYPHEN = re.compile(r"-")


def _french_normalize(text: str) -> str:
    return _FR_HYPHEN.sub(" ", text)


_NORMALIZERS = {"fr": _french_normalize, "de": lambda text: text, "ko": lambda text: text}


class G2P:
    """Text -> (phonemes, ids) exactly as the released MaskGCT/Metis front end.

    Args:
        vocab: phone vocabulary; the packaged ``phone_vocab.json`` when None.
        chinese_lexicon: path of the reference's ``chinese_lexicon.txt`` (else ``$METIS_CHINESE_LEXICON``).
        poly_bert: path of the reference's ``poly_bert_model.onnx`` (else ``$METIS_POLY_BERT_ONNX``).
        mandarin: a ready Mandarin path (e.g. :meth:`MandarinG2P.from_resources`); overrides the two paths.

    The Mandarin data files are loaded on the first Chinese segment; English, fr, de and ko need only espeak-ng.
    """

    def __init__(
        self,
        vocab: PhoneVocab | str | Path | None = None,
        chinese_lexicon: str | Path | None = None,
        poly_bert: str | Path | None = None,
        mandarin: MandarinG2P | None = None,
    ):
        self.vocab = vocab if isinstance(vocab, PhoneVocab) else PhoneVocab.load(vocab)
        self._chinese_lexicon = chinese_lexicon
        self._poly_bert = poly_bert
        self._mandarin = mandarin

    @property
    def mandarin(self) -> MandarinG2P:
        """The Mandarin path; raises :class:`MissingMandarinResources` when its data files are not supplied."""
        if self._mandarin is None:
            self._mandarin = MandarinG2P.from_resources(
                MandarinResources.resolve(self._chinese_lexicon, self._poly_bert)
            )
        return self._mandarin

    def __call__(self, text: str, language: str = "en") -> tuple[str, list[int]]:
        """Route as the reference helper: en/zh -> :meth:`chn_eng_g2p`, fr/de/ko -> :meth:`cleaner_g2p`."""
        if language in CHN_ENG_LANGUAGES:
            return self.chn_eng_g2p(text)
        return self.cleaner_g2p(text, language)

    def cleaner_g2p(self, text: str, language: str) -> tuple[str, list[int]]:
        """The reference ``g2p(text, language)``: one language's cleaner on the whole text, no segmentation.

        For "en" the trailing ``|_`` is kept (only :meth:`chn_eng_g2p` removes it).
        """
        if language == "en":
            phonemes = english.english_to_ipa(text)
        elif language == "zh":
            phonemes = self.mandarin(text)
        elif language in _NORMALIZERS:
            phonemes = get_tokenizer(ESPEAK_LANGUAGES[language])(_NORMALIZERS[language](text))
        elif language in ("ja", "auto"):
            raise UnsupportedLanguageError(
                f"language {language!r} is not implemented: the reference reads Japanese with pyopenjtalk/pykakasi "
                "and 'auto' with LangSegment; pass one of en, zh, fr, de, ko"
            )
        else:
            raise UnknownLanguageError(f"Unknown language: {language!r} (supported: en, zh, fr, de, ko)")
        return phonemes, self.vocab.encode(phonemes)

    def chn_eng_g2p(self, text: str) -> tuple[str, list[int]]:
        """The reference ``chn_eng_g2p``: segment by script, G2P each segment, append ``|`` after each.

        The result always ends with ``|``; a final English segment loses its trailing ``_`` (and id 4).
        """
        segments = segment_by_script(text)
        phonemes, ids = "", []
        for segment, label in segments:
            if label not in CHN_ENG_LANGUAGES:
                raise UnknownLanguageError(
                    f"Unknown language: {label!r}: the text {text!r} has no Chinese character (U+4E00-U+9FA5) and "
                    "no ASCII letter, which the reference cannot read (it raises on digits-, punctuation- or "
                    "whitespace-only input)"
                )
            segment_phonemes, segment_ids = self.cleaner_g2p(segment, label)
            phonemes += segment_phonemes + "|"
            ids += segment_ids
        if segments[-1][1] == "en" and len(phonemes) >= 2 and phonemes[-2] == "_":
            phonemes = phonemes[:-2]
            ids = ids[:-1]
        return phonemes, ids
