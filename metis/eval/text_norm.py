"""English text normalisation for WER, in the spirit of Whisper's English normaliser.

Both reference and hypothesis go through ``normalize_english`` so that spelling, number, punctuation and
casing differences do not count as errors: lowercase, bracketed asides and fillers dropped, contractions
expanded, titles spelled out, British spellings made American, number words written as digits
("twenty-five" -> "25", "nineteen eighty four" -> "1984", "third" -> "3rd", "two point five" -> "2.5"),
symbols spoken ("%" -> "percent"), punctuation removed. ``normalize_chars`` is the character-level
variant for Chinese/Japanese/Korean CER.
"""
from __future__ import annotations

import re
import unicodedata

_ONES = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000, "trillion": 1_000_000_000_000}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
    "twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "sixtieth": 60, "seventieth": 70,
    "eightieth": 80, "ninetieth": 90, "hundredth": 100, "thousandth": 1000, "millionth": 1_000_000,
}
_NUMBER_WORDS = set(_ONES) | set(_TENS) | set(_SCALES) | {"hundred"}

_CONTRACTIONS = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"),
    (r"\bain't\b", "is not"), (r"\blet's\b", "let us"), (r"n't\b", " not"), (r"'re\b", " are"),
    (r"'ll\b", " will"), (r"'ve\b", " have"), (r"'m\b", " am"), (r"'d been\b", " had been"),
    (r"'s been\b", " has been"), (r"'d\b", " would"),
]
_TITLES = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "prof": "professor", "st": "saint",
    "jr": "junior", "sr": "senior", "gen": "general", "gov": "governor", "capt": "captain", "lt": "lieutenant",
    "sgt": "sergeant", "rev": "reverend", "hon": "honorable", "vs": "versus", "etc": "et cetera",
}
_FILLERS = {"hmm", "hm", "mm", "mmm", "mhm", "uh", "um", "uhm", "er", "erm"}
# a short British -> American list (the common words in read speech corpora)
_SPELLINGS = {
    "colour": "color", "colours": "colors", "coloured": "colored", "favour": "favor", "favourite": "favorite",
    "honour": "honor", "honoured": "honored", "labour": "labor", "neighbour": "neighbor",
    "neighbours": "neighbors", "neighbourhood": "neighborhood", "behaviour": "behavior", "humour": "humor",
    "harbour": "harbor", "rumour": "rumor", "vapour": "vapor", "valour": "valor", "splendour": "splendor",
    "parlour": "parlor", "armour": "armor", "endeavour": "endeavor", "centre": "center", "centres": "centers",
    "theatre": "theater", "metre": "meter", "metres": "meters", "litre": "liter", "fibre": "fiber",
    "sombre": "somber", "realise": "realize", "realised": "realized", "recognise": "recognize",
    "recognised": "recognized", "organise": "organize", "organised": "organized", "apologise": "apologize",
    "criticise": "criticize", "analyse": "analyze", "paralyse": "paralyze", "grey": "gray", "greyish": "grayish",
    "travelled": "traveled", "travelling": "traveling", "traveller": "traveler", "cancelled": "canceled",
    "marvellous": "marvelous", "jewellery": "jewelry", "defence": "defense", "offence": "offense",
    "licence": "license", "pretence": "pretense", "programme": "program", "catalogue": "catalog",
    "dialogue": "dialog", "cheque": "check", "plough": "plow", "tyre": "tire", "mould": "mold",
    "moustache": "mustache", "aeroplane": "airplane", "sceptical": "skeptical", "judgement": "judgment",
    "practise": "practice", "towards": "toward", "whilst": "while", "amongst": "among", "okay": "ok",
}


def _suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


class _Number:
    """Accumulates one spoken number: ``total`` (closed scales) + ``current`` (below the next scale)."""

    def __init__(self):
        self.total = 0
        self.current = 0
        self.words = 0
        self.last = ""  # kind of the last word: ones, teen, tens, hundred, scale

    def value(self) -> int:
        return self.total + self.current

    def add(self, word: str) -> bool:
        """Take ``word`` into the number; False when it cannot continue this number."""
        if word in _ONES:
            v = _ONES[word]
            kind = "teen" if v >= 10 else "ones"
            if self.words == 0:
                self.current = v
            elif kind == "ones" and self.last in ("tens", "hundred", "scale") and v > 0:
                self.current += v
            elif kind == "teen" and self.last in ("hundred", "scale"):
                self.current += v
            elif kind == "teen" and self.last == "teen" and self.total == 0 and self.current < 100:
                self.current = self.current * 100 + v  # "nineteen eleven" -> 1911
            else:
                return False
        elif word in _TENS:
            v, kind = _TENS[word], "tens"
            if self.words == 0:
                self.current = v
            elif self.last in ("hundred", "scale"):
                self.current += v
            elif self.last in ("teen", "tens") and self.total == 0 and self.current < 100:
                self.current = self.current * 100 + v  # years: "nineteen eighty", "twenty twenty"
            else:
                return False
        elif word == "hundred":
            kind = "hundred"
            if self.last == "hundred" or self.current % 100 == 0 and self.words:
                return False
            self.current = (self.current or 1) * 100
        elif word in _SCALES:
            kind = "scale"
            if self.last == "scale" and self.current == 0:
                return False
            self.total += (self.current or 1) * _SCALES[word]
            self.current = 0
        else:
            return False
        self.words += 1
        self.last = kind
        return True


def _numbers_to_digits(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        num = _Number()
        j = i
        while j < len(tokens):
            w = tokens[j]
            if w == "and" and num.words and j + 1 < len(tokens) and num.last in ("hundred", "scale") \
                    and tokens[j + 1] in (set(_ONES) | set(_TENS) | set(_ORDINALS)):
                j += 1
                continue
            if not num.add(w):
                break
            j += 1
        if num.words == 0:
            w = tokens[i]
            if w in _ORDINALS and w != "second":  # "wait a second" stays a word
                out.append(f"{_ORDINALS[w]}{_suffix(_ORDINALS[w])}")
            else:
                out.append(w)
            i += 1
            continue
        value = num.value()
        # an ordinal closing the number: "twenty first" -> 21st, "one hundredth" -> 100th
        if j < len(tokens) and tokens[j] in _ORDINALS and num.last in ("tens", "hundred", "scale") \
                and (_ORDINALS[tokens[j]] < 10 or num.last != "tens"):
            o = _ORDINALS[tokens[j]]
            value = value * o if o >= 100 else value + o
            out.append(f"{value}{_suffix(value)}")
            i = j + 1
            continue
        # decimals: "two point five" -> 2.5
        if j + 1 < len(tokens) and tokens[j] == "point" and tokens[j + 1] in _ONES and _ONES[tokens[j + 1]] < 10:
            digits = []
            k = j + 1
            while k < len(tokens) and tokens[k] in _ONES and _ONES[tokens[k]] < 10:
                digits.append(str(_ONES[tokens[k]]))
                k += 1
            out.append(f"{value}.{''.join(digits)}")
            i = k
            continue
        out.append(str(value))
        i = j
    return out


def _strip_diacritics(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def normalize_english(text: str) -> str:
    s = _strip_diacritics(unicodedata.normalize("NFKC", text)).lower()
    s = s.replace("\u2019", "'").replace("\u2018", "'")
    s = re.sub(r"[\[(<{][^\])>}]*[\])>}]", " ", s)  # bracketed asides: [laughter], (inaudible)
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    s = re.sub(r"([$£€])\s*(\d+(?:\.\d+)?)", lambda m: f"{m.group(2)} " + {"$": "dollars", "£": "pounds",
                                                                          "€": "euros"}[m.group(1)], s)
    s = s.replace("%", " percent ").replace("&", " and ").replace("@", " at ")
    for pat, rep in _CONTRACTIONS:
        s = re.sub(pat, rep, s)
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)  # periods except decimal points
    s = re.sub(r"[^\w\s'.]", " ", s)  # other punctuation and hyphens -> space
    s = re.sub(r"(?<!\w)'|'(?!\w)", " ", s)  # quotes, keep in-word apostrophes (it's)
    tokens = []
    for w in s.split():
        if w in _FILLERS:
            continue
        w = _TITLES.get(w, w)
        w = _SPELLINGS.get(w, w)
        tokens.extend(w.split())
    tokens = _numbers_to_digits(tokens)
    return " ".join(tokens)


def normalize_chars(text: str) -> str:
    """For CER in languages without spaces: NFKC, lowercase, punctuation and whitespace removed."""
    s = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in s if not (unicodedata.category(c).startswith(("P", "S", "Z")) or c.isspace()))
