"""Mandarin text -> phoneme string, as the reference ``chinese_to_ipa`` (docs/reference.md §9.6).

Numbers (cn2an) -> normalisation -> jieba words + merges -> pinyin per word (lexicon, polyphone BERT) -> tone
sandhi -> bopomofo -> the vocabulary's symbols. The quirks of the reference are kept: the 3-3-3 sandhi bug, the
apical vowel lost in the neutral tone, no erhua merging, no sandhi across words.

The rule-based parts (:func:`number_to_chinese`, :func:`normalize`, :func:`split_words`, :func:`apply_sandhi`,
:func:`bopomofo_to_ipa`) need only cn2an and jieba. The pinyin step needs the reference's data files, which are
not shipped here (:class:`MandarinResources`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_LEXICON",
    "ENV_POLY_BERT",
    "MandarinResources",
    "MandarinG2P",
    "MissingMandarinResources",
    "number_to_chinese",
    "normalize",
    "split_words",
    "merge_words",
    "apply_sandhi",
    "bopomofo_to_ipa",
    "finalize",
]

ENV_LEXICON = "METIS_CHINESE_LEXICON"
ENV_POLY_BERT = "METIS_POLY_BERT_ONNX"

PUNCTUATION = ",.?!;:'…"
_FULLWIDTH = str.maketrans(
    {"，": ",", "。": ".", "！": "!", "？": "?", "；": ";", "：": ":", "、": ",", "‘": "'", "’": "'"}
)
_ELLIPSES = re.compile(r"⋯|···|・・・|\.\.\.")
_NOT_KEPT = re.compile(r"[^\u4e00-\u9fff_,.?!;:'…]")

TONE_MARKS = "ˉˊˇˋ˙"
_TONE_OF_DIGIT = {"1": "", "2": "ˊ", "3": "ˇ", "4": "ˋ", "5": "˙", "0": "˙"}
# Tone mark -> arrow appended to the final (neutral: nothing).
TONE_ARROWS = {"ˉ": "→", "ˊ": "↑", "ˇ": "↓↑", "ˋ": "↓", "˙": ""}

INITIALS = {
    "ㄅ": "p⁼", "ㄆ": "pʰ", "ㄇ": "m", "ㄈ": "f", "ㄉ": "t⁼", "ㄊ": "tʰ", "ㄋ": "n", "ㄌ": "l",
    "ㄍ": "k⁼", "ㄎ": "kʰ", "ㄏ": "x", "ㄐ": "tʃ⁼", "ㄑ": "tʃʰ", "ㄒ": "ʃ",
    "ㄓ": "ts`⁼", "ㄔ": "ts`ʰ", "ㄕ": "s`", "ㄖ": "ɹ`", "ㄗ": "ts⁼", "ㄘ": "tsʰ", "ㄙ": "s",
}  # fmt: skip
# Retroflex and dental sibilants: directly followed by a tone they take the apical vowel "ɹ".
APICAL_INITIALS = frozenset("ㄓㄔㄕㄖㄗㄘㄙ")
# bo/po/mo/fo: initial and final form one token.
LABIAL_O = {"ㄅㄛ": "p⁼wo", "ㄆㄛ": "pʰwo", "ㄇㄛ": "mwo", "ㄈㄛ": "fwo"}
COMPOUND_FINALS = {
    "ㄧㄢ": "jɛn", "ㄩㄢ": "ɥæn", "ㄧㄣ": "in", "ㄩㄣ": "ɥn", "ㄧㄥ": "iŋ", "ㄨㄥ": "ʊŋ", "ㄩㄥ": "jʊŋ",
    "ㄧㄚ": "ia", "ㄧㄝ": "iɛ", "ㄧㄠ": "iɑʊ", "ㄧㄡ": "ioʊ", "ㄧㄤ": "iɑŋ", "ㄨㄚ": "ua", "ㄨㄛ": "uo",
    "ㄨㄞ": "uaɪ", "ㄨㄟ": "ueɪ", "ㄨㄢ": "uan", "ㄨㄣ": "uən", "ㄨㄤ": "uɑŋ", "ㄩㄝ": "ɥɛ",
}  # fmt: skip
SIMPLE_FINALS = {
    "ㄚ": "a", "ㄛ": "o", "ㄜ": "ə", "ㄝ": "ɛ", "ㄞ": "aɪ", "ㄟ": "eɪ", "ㄠ": "ɑʊ", "ㄡ": "oʊ",
    "ㄢ": "an", "ㄣ": "ən", "ㄤ": "ɑŋ", "ㄥ": "əŋ", "ㄦ": "əɹ", "ㄧ": "i", "ㄨ": "u", "ㄩ": "ɥ",
}  # fmt: skip
_BOPOMOFO_CHARS = frozenset("".join(INITIALS) + "".join(SIMPLE_FINALS))

# 儿 words whose 儿 keeps its own tone (docs/reference.md §9.6.5 rule 5).
ER_KEEP_TONE = frozenset({"女儿", "老儿", "男儿", "少儿", "小儿"})
# 一 followed by one of these is read in tone 1 (docs/reference.md §9.6.5 rule 4: 一月, 一日, 一号).
YI_TONE1_BEFORE = frozenset("月日号")
_NUMERAL_DIGITS = frozenset("〇零一二三四五六七八九两")

_CLEANUP = re.compile(r"[^\w\s_,.?!;:'…|↑↓→⁼ʰ`]")
_PUNCT_CHAR = re.compile(r"([,.?!;:'…])")
_BARS = re.compile(r"\|+")


class MissingMandarinResources(FileNotFoundError):
    """The reference's Mandarin data files were not supplied (or are incomplete)."""


# ---------------------------------------------------------------------------------------------------------------
# Text steps (docs/reference.md §9.6.1–§9.6.3)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def number_to_chinese(text: str) -> str:
    """Strip, then cn2an ``an2cn`` (docs/reference.md §9.6.1): 25 -> 二十五, 1949年 -> 一九四九年, 30% -> 百分之三十."""
    try:
        import cn2an
    except ImportError as e:
        raise ImportError("the Mandarin G2P needs `cn2an` (pip install cn2an==0.5.24)") from e
    return cn2an.transform(text.strip(), "an2cn")


def normalize(text: str) -> str:
    """Punctuation to ASCII, delete whitespace, keep only CJK (U+4E00-U+9FFF) and ``_ , . ? ! ; : ' …``."""
    text = text.translate(_FULLWIDTH)
    text = _ELLIPSES.sub("…", text)
    text = re.sub(r"\s+", "", text)
    return _NOT_KEPT.sub("", text)


@functools.lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba
    except ImportError as e:
        raise ImportError("the Mandarin G2P needs `jieba` (pip install jieba==0.42.1)") from e
    jieba.setLogLevel(logging.WARNING)
    return jieba


def _join_following(words: list[str], char: str) -> list[str]:
    """A stand-alone `char` joins the word after it."""
    out: list[str] = []
    for word in words:
        if out and out[-1] == char:
            out[-1] += word
        else:
            out.append(word)
    return out


def merge_words(words: list[str]) -> list[str]:
    """The three merge passes after jieba (docs/reference.md §9.6.3): X一X, then stand-alone 一 and 不 forward, 儿 backward."""
    merged: list[str] = []
    skip_next = False
    for i, word in enumerate(words):
        if skip_next:
            skip_next = False
            continue
        if word == "一" and 0 < i < len(words) - 1 and words[i - 1] == words[i + 1] and merged:
            merged[-1] = merged[-1] + "一" + words[i + 1]
            skip_next = True
        else:
            merged.append(word)
    words = _join_following(_join_following(merged, "一"), "不")  # stand-alone 一 / 不 join the next word
    merged = []
    for word in words:  # a stand-alone 儿 joins the preceding word
        if word == "儿" and merged:
            merged[-1] += word
        else:
            merged.append(word)
    return merged


def split_words(text: str) -> list[str]:
    """jieba ``lcut`` (accurate mode, bundled dictionary) followed by :func:`merge_words`."""
    return merge_words(_jieba().lcut(text))


# ---------------------------------------------------------------------------------------------------------------
# Tone sandhi on bopomofo syllables (docs/reference.md §9.6.5). A syllable is a string of bopomofo letters plus tone marks; tone 1
# has no mark yet. Non-syllable tokens (punctuation, unknown characters) pass through untouched.


def _is_syllable(token: str) -> bool:
    return bool(token) and token[0] in _BOPOMOFO_CHARS


def _tone(token: str) -> int | None:
    if not _is_syllable(token):
        return None
    last = token[-1]
    return {"ˊ": 2, "ˇ": 3, "ˋ": 4, "˙": 5}.get(last, 1)


def _with_tone(token: str, mark: str) -> str:
    return token.rstrip(TONE_MARKS) + mark


def apply_sandhi(word: str, syllables: list[str]) -> list[str]:
    """The reference's per-word tone sandhi, quirks included; ``syllables`` align with ``word``'s characters."""
    syl = list(syllables)
    if len(syl) != len(word):
        return syl
    tones = [_tone(s) for s in syl]
    # 1. three-character 3-3-3: a ˊ is appended after the ˇ (reference bug: the tones stay 3-3-3 plus a stray ↑)
    if len(word) == 3 and tones[0] == tones[1] == tones[-1] == 3:
        syl[0] += "ˊ"
        syl[1] += "ˊ"
    # 2. two-character 3-3: the first becomes tone 2
    elif len(word) == 2 and tones[0] == tones[1] == 3:
        syl[0] = _with_tone(syl[0], "ˊ")
    # 3. 不
    if len(word) == 3 and word[1] == "不" and word[0] == word[2]:
        syl[1] = _with_tone(syl[1], "˙")
    elif len(word) > 1:
        for i, ch in enumerate(word[:-1]):
            if ch == "不" and _tone(syl[i + 1]) == 4:
                syl[i] = _with_tone(syl[i], "ˊ")
    # 4. 一
    if "一" in word and len(word) > 1:
        syl = _yi_sandhi(word, syl)
    # 5. 儿: neutral at the end of a longer word (no erhua merging)
    if len(word) > 1 and word[-1] == "儿" and word not in ER_KEEP_TONE:
        syl[-1] = _with_tone(syl[-1], "˙")
    return syl


def _yi_sandhi(word: str, syl: list[str]) -> list[str]:
    others = [ch for ch in word if ch != "一"]
    if others and all(ch.isnumeric() for ch in others):  # inside a number: tone 1
        return syl
    if len(word) == 3 and word[1] == "一" and word[0] == word[2]:  # X一X: neutral
        syl[1] = _with_tone(syl[1], "˙")
        return syl
    if word.startswith("第一"):
        return syl
    for i, ch in enumerate(word[:-1]):
        if ch != "一":
            continue
        following = word[i + 1]
        if following in YI_TONE1_BEFORE or following in _NUMERAL_DIGITS:
            continue  # 一月 一日 一号, and a leading 一 read digit by digit (一九四九年)
        next_tone = _tone(syl[i + 1])
        if next_tone == 4:
            syl[i] = _with_tone(syl[i], "ˊ")
        elif next_tone is not None:  # not before punctuation
            syl[i] = _with_tone(syl[i], "ˋ")
    return syl


# ---------------------------------------------------------------------------------------------------------------
# Bopomofo -> vocabulary symbols (docs/reference.md §9.6.6)


def _syllable_to_ipa(syllable: str) -> list[str]:
    body = syllable.rstrip(TONE_MARKS)
    marks = syllable[len(body) :] or "ˉ"
    arrows = [TONE_ARROWS[m] for m in marks]
    if body in LABIAL_O:
        return [LABIAL_O[body] + arrows[0], *arrows[1:]]
    initial = INITIALS.get(body[0]) if body else None
    final = body[1:] if initial is not None else body
    tokens: list[str] = []
    if initial is not None and not final:
        if body[0] in APICAL_INITIALS and arrows[0]:
            tokens.append(initial + "ɹ" + arrows[0])  # 是 s`ɹ↓, 四 sɹ↓
        else:
            tokens.append(initial)  # neutral tone: the apical vowel is lost (意思 -> s)
            if arrows[0]:
                tokens.append(arrows[0])
        return tokens + arrows[1:]
    if initial is not None:
        tokens.append(initial)
    if final in COMPOUND_FINALS:
        ipa = COMPOUND_FINALS[final]
    else:
        ipa = "".join(SIMPLE_FINALS.get(ch, ch) for ch in final)
    return tokens + [ipa + arrows[0], *arrows[1:]]


def bopomofo_to_ipa(bopomofo: str) -> str:
    """``|``-joined bopomofo syllables and punctuation -> the final Mandarin phoneme string.

    Syllables without a tone mark get tone 1; each syllable becomes initial token + (final + tone) token
    (bo/po/mo/fo and apical syllables are one token); then :func:`finalize`.
    """
    pieces: list[str] = []
    for token in bopomofo.split("|"):
        if _is_syllable(token):
            pieces.extend(_syllable_to_ipa(token))
        else:
            pieces.append(token)
    return finalize("|".join(pieces))


def finalize(ipa: str) -> str:
    """Final clean-up (docs/reference.md §9.6.6): drop the leading ``|``, odd characters, ``|`` around punctuation, collapse, strip."""
    ipa = ipa.removeprefix("|")
    ipa = _CLEANUP.sub("", ipa)
    ipa = _PUNCT_CHAR.sub(r"|\1|", ipa)
    ipa = _BARS.sub("|", ipa)
    return ipa.removeprefix("|").rstrip("|")


# ---------------------------------------------------------------------------------------------------------------
# The data-file dependent part: pinyin per word (docs/reference.md §9.6.4)


@dataclass(frozen=True)
class MandarinResources:
    """Paths to the reference's Mandarin data (Amphion ``models/tts/maskgct/g2p/sources``; not shipped here).

    Args:
        lexicon: ``chinese_lexicon.txt`` (one ``word<TAB>pinyin pinyin...`` per line).
        poly_bert: ``g2p_chinese_model/poly_bert_model.onnx``.
        pinyin_to_bopomofo: ``pinyin_2_bpmf.txt``; default: beside the lexicon.
        polydict: ``polydict.json`` (class index + 1 -> ``字{pinyin}``); default: beside the ONNX file.
        polychar: ``polychar.txt`` (the polyphonic characters); default: beside the ONNX file, else derived
            from ``polydict.json``.
        bert_vocab: ``vocab.txt`` (the Chinese BERT vocabulary); default: beside the ONNX file.
    """

    lexicon: Path
    poly_bert: Path
    pinyin_to_bopomofo: Path | None = None
    polydict: Path | None = None
    polychar: Path | None = None
    bert_vocab: Path | None = None

    @classmethod
    def resolve(cls, lexicon: str | Path | None = None, poly_bert: str | Path | None = None) -> "MandarinResources":
        """Arguments first, then ``$METIS_CHINESE_LEXICON`` / ``$METIS_POLY_BERT_ONNX``; checks every file."""
        lexicon = lexicon or os.environ.get(ENV_LEXICON)
        poly_bert = poly_bert or os.environ.get(ENV_POLY_BERT)
        if not lexicon or not poly_bert:
            raise MissingMandarinResources(
                "Mandarin G2P needs the reference data files chinese_lexicon.txt and poly_bert_model.onnx "
                f"(Amphion models/tts/maskgct/g2p/sources/, also in the maskgct sdist): pass chinese_lexicon= and "
                f"poly_bert= to G2P(), or set ${ENV_LEXICON} and ${ENV_POLY_BERT}"
            )
        lexicon, poly_bert = Path(lexicon), Path(poly_bert)
        res = cls(
            lexicon=lexicon,
            poly_bert=poly_bert,
            pinyin_to_bopomofo=lexicon.parent / "pinyin_2_bpmf.txt",
            polydict=poly_bert.parent / "polydict.json",
            polychar=poly_bert.parent / "polychar.txt",
            bert_vocab=poly_bert.parent / "vocab.txt",
        )
        required = [res.lexicon, res.poly_bert, res.pinyin_to_bopomofo, res.polydict, res.bert_vocab]
        missing = [str(p) for p in required if not p.is_file()]
        if missing:
            raise MissingMandarinResources(
                "Mandarin G2P data files not found: " + ", ".join(missing) + " (keep Amphion's layout: "
                "pinyin_2_bpmf.txt beside chinese_lexicon.txt; polydict.json, polychar.txt and vocab.txt beside "
                "poly_bert_model.onnx)"
            )
        return res


def _read_lexicon(path: Path) -> dict[str, list[str]]:
    lexicon: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 1) if "\t" in line else line.split(None, 1)
            if len(parts) == 2 and parts[0].strip():
                lexicon[parts[0].strip()] = parts[1].split()
    return lexicon


def _read_pairs(path: Path) -> dict[str, str]:
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                table[parts[0]] = parts[1]
    return table


class PolyphoneBert:
    """The reference's polyphone classifier (docs/reference.md §9.6.4): argmax over all classes, context = the zh segment."""

    def __init__(self, onnx_path: Path, vocab_path: Path, polydict_path: Path):
        try:
            import numpy as np
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("the Mandarin G2P needs `onnxruntime` (pip install onnxruntime)") from e
        self._np = np
        self._session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        with open(vocab_path, encoding="utf-8") as f:
            self._vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        for token in ("[CLS]", "[UNK]"):
            if token not in self._vocab:
                raise ValueError(f"{vocab_path}: BERT vocabulary lacks {token}")
        with open(polydict_path, encoding="utf-8") as f:
            self._labels = {int(k): v for k, v in json.load(f).items()}
        self._cache: dict[str, object] = {}

    def predict(self, text: str, index: int) -> str:
        """Pinyin (``le5``) of the character at ``index`` of the normalised segment ``text``."""
        argmax = self._cache.get(text)
        if argmax is None:
            np = self._np
            unk = self._vocab["[UNK]"]
            ids = [self._vocab["[CLS]"]] + [self._vocab.get(ch.lower(), unk) for ch in text]
            logits = np.asarray(self._session.run(None, {self._input: np.asarray([ids], dtype=np.int64)})[0])
            logits = logits.reshape(-1, logits.shape[-1])
            if logits.shape[0] == len(ids):  # a graph that kept the [CLS] row
                logits = logits[1:]
            argmax = logits.argmax(axis=-1)
            self._cache = {text: argmax}
        label = self._labels[int(argmax[index]) + 1]
        return label[label.index("{") + 1 : label.index("}")]


class MandarinG2P:
    """``chinese_to_ipa`` (docs/reference.md §9.6) over a lexicon, a pinyin->bopomofo table and a polyphone classifier.

    Args:
        lexicon: word -> pinyin syllables with tone digits (``"银行" -> ["yin2", "hang2"]``).
        pinyin_to_bopomofo: toneless pinyin -> bopomofo (``"yin" -> "ㄧㄣ"``).
        polychars: the characters the polyphone classifier decides.
        polyphone: ``(segment_text, index) -> pinyin`` for the polyphonic character at ``index``.

    Use :meth:`from_resources` for the reference's data files.
    """

    def __init__(self, lexicon, pinyin_to_bopomofo, polychars, polyphone):
        self.lexicon = dict(lexicon)
        self.pinyin_to_bopomofo = dict(pinyin_to_bopomofo)
        self.polychars = frozenset(polychars)
        self.polyphone = polyphone

    @classmethod
    def from_resources(cls, resources: MandarinResources) -> "MandarinG2P":
        with open(resources.polydict, encoding="utf-8") as f:
            labels = json.load(f).values()
        if resources.polychar is not None and resources.polychar.is_file():
            polychars = resources.polychar.read_text(encoding="utf-8").split()
        else:
            polychars = [label.split("{", 1)[0] for label in labels]
        bert = PolyphoneBert(resources.poly_bert, resources.bert_vocab, resources.polydict)
        return cls(_read_lexicon(resources.lexicon), _read_pairs(resources.pinyin_to_bopomofo), polychars, bert.predict)

    def _syllable(self, pinyin: str) -> str | None:
        base, digit = (pinyin[:-1], pinyin[-1]) if pinyin[-1:].isdigit() else (pinyin, "1")
        bopomofo = self.pinyin_to_bopomofo.get(base)
        return None if bopomofo is None else bopomofo + _TONE_OF_DIGIT.get(digit, "")

    def _word_tokens(self, word: str, text: str, offset: int) -> list[str]:
        if word in self.lexicon and not (len(word) == 1 and word in self.polychars):
            tokens = [self._syllable(p) for p in self.lexicon[word]]
            if all(t is not None for t in tokens):
                return tokens
            try:  # rare: a syllable missing from the table -> pypinyin's bopomofo for the whole word, appended
                from pypinyin import Style, pinyin
            except ImportError as e:
                raise ImportError("the Mandarin G2P needs `pypinyin` for syllables outside pinyin_2_bpmf.txt") from e
            whole = "".join(p[0] for p in pinyin(word, style=Style.BOPOMOFO))
            return [t for t in tokens if t is not None] + [whole]
        tokens = []
        for i, ch in enumerate(word):
            if ch in self.polychars:
                syllable = self._syllable(self.polyphone(text, offset + i))
            elif ch in self.lexicon:
                syllable = self._syllable(self.lexicon[ch][0])
            else:
                syllable = None
            tokens.append(syllable if syllable is not None else ch)
        return tokens

    def bopomofo(self, text: str) -> str:
        """Normalised zh text -> ``|``-joined bopomofo syllables (tone sandhi applied, tone 1 unmarked)."""
        tokens: list[str] = []
        offset = 0
        for word in split_words(text):
            tokens.extend(apply_sandhi(word, self._word_tokens(word, text, offset)))
            offset += len(word)
        return "|".join(tokens)

    def __call__(self, text: str) -> str:
        """A zh segment -> its phoneme string (no trailing ``|``, never a ``_``)."""
        return bopomofo_to_ipa(self.bopomofo(normalize(number_to_chinese(text))))
