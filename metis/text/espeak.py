"""espeak-ng through phonemizer, configured exactly as the MaskGCT text tokenizer (docs/reference.md §9.5.3–§9.5.5).

The same tokenizer serves English (``en-us``) and the fr/de/ko paths (docs/reference.md §9.10): per line, clean the characters,
phonemize with punctuation preserved, then put ``|`` around every punctuation mark.

The fixtures hold for espeak-ng 1.51; :func:`espeak_version` lets callers check what they run.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "PUNCTUATION",
    "ESPEAK_LANGUAGES",
    "EspeakTokenizer",
    "clean_line",
    "espeak_version",
    "get_tokenizer",
]

# The marks espeak keeps (apostrophe included: that is why "it's" is spelled out, quirk 3).
PUNCTUATION = ",.?!;:'…"
# Language code -> espeak voice.
ESPEAK_LANGUAGES = {"en": "en-us", "fr": "fr-fr", "de": "de", "ko": "ko"}

_FULLWIDTH = str.maketrans(
    {"，": ",", "。": ".", "！": "!", "？": "?", "；": ";", "：": ":", "、": ",", "‘": "'", "’": "'"}
)
_ELLIPSES = re.compile(r"⋯|···|・・・|\.\.\.")
_NOT_KEPT = re.compile(r"[^\w\s,.?!;:'…]")
_SPACE_AROUND_PUNCT = re.compile(r"\s*([,.?!;:'…])\s*")
_SPACES = re.compile(r"\s+")
_PUNCT_CHAR = re.compile(r"([,.?!;:'…])")
_BARS = re.compile(r"\|+")


def clean_line(line: str) -> str:
    """Character clean-up of one line before espeak (docs/reference.md §9.5.3, steps 1-6)."""
    line = line.strip().translate(_FULLWIDTH)
    line = _ELLIPSES.sub("…", line)
    line = _NOT_KEPT.sub("", line)  # quotes, hyphens, dashes, brackets, & + @ # % $ / ... go
    line = _SPACE_AROUND_PUNCT.sub(r"\1", line)
    return _SPACES.sub(" ", line)


def mark_punctuation(phonemes: str) -> str:
    """Surround punctuation with ``|``, collapse ``|`` runs, strip trailing ``|`` (docs/reference.md §9.5.5 steps 1-3).

    A leading ``|`` stays (``'Curly`` -> ``|'|k...``).
    """
    phonemes = _PUNCT_CHAR.sub(r"|\1|", phonemes)
    phonemes = _BARS.sub("|", phonemes)
    return phonemes.rstrip("|")


@functools.lru_cache(maxsize=1)
def espeak_version() -> tuple[int, ...]:
    """The espeak-ng library version phonemizer loads, e.g. ``(1, 51)``."""
    from phonemizer.backend import EspeakBackend

    return tuple(EspeakBackend.version())


class EspeakTokenizer:
    """phonemizer's ``EspeakBackend`` with the reference settings (docs/reference.md §9.5.4).

    Args:
        voice: espeak voice, e.g. ``"en-us"``, ``"fr-fr"``, ``"de"``, ``"ko"``.
    """

    def __init__(self, voice: str):
        try:
            from phonemizer.backend import EspeakBackend
            from phonemizer.separator import Separator
        except ImportError as e:  # pragma: no cover - phonemizer is a core dependency
            raise ImportError("the espeak G2P paths need `phonemizer` (pip install 'phonemizer>=3.2,<3.5')") from e
        self.voice = voice
        self._separator = Separator(phone="|", word="|_|", syllable="-")
        self._backend = EspeakBackend(
            voice,
            punctuation_marks=PUNCTUATION,
            preserve_punctuation=True,
            with_stress=False,
            tie=False,
            language_switch="remove-flags",
            words_mismatch="ignore",
        )

    def raw(self, lines: list[str]) -> list[str]:
        """espeak's output for already cleaned lines, before any post-processing."""
        return self._backend.phonemize(lines, separator=self._separator, strip=True, njobs=1)

    def lines(self, text: str) -> list[str]:
        """The cleaned lines the tokenizer sends to espeak for ``text`` (one per ``\\n``-separated line)."""
        return [clean_line(line) for line in text.split("\n")]

    def __call__(self, text: str) -> str:
        """Phonemize ``text``: lines phonemized separately and joined with ``\\n`` (quirk 14)."""
        return mark_punctuation("\n".join(self.raw(self.lines(text))))


@functools.lru_cache(maxsize=None)
def get_tokenizer(voice: str) -> EspeakTokenizer:
    """One shared tokenizer per voice (building the backend loads espeak)."""
    return EspeakTokenizer(voice)
