"""English number expansion, as the reference front end reads numbers (docs/reference.md §9.5.2).

Quirks kept on purpose (the released checkpoint was trained on them): decimals read their fraction as a whole
number, fractions catch dates, inflect's group commas and the comma in "dollars, N cents" become pause tokens,
and hyphens inside "ninety-nine" are later deleted so espeak reads one fused word.
"""

from __future__ import annotations

import functools
import re

__all__ = ["normalize_numbers"]

_COMMA_NUMBER = re.compile(r"([0-9][0-9,]+[0-9])")
_POUNDS = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_FRACTION = re.compile(r"([0-9]+)/([0-9]+)")
_DECIMAL = re.compile(r"([0-9]+)\.([0-9]+)")
_PERCENT = re.compile(r"([0-9.,]*[0-9]+)%")
_ORDINAL = re.compile(r"[0-9]+(?:st|nd|rd|th)")
_INTEGER = re.compile(r"[0-9]+")


@functools.lru_cache(maxsize=1)
def _engine():
    try:
        import inflect
    except ImportError as e:
        raise ImportError("English number expansion needs `inflect` (pip install inflect)") from e
    return inflect.engine()


def _words(number: int | str) -> str:
    """inflect's cardinal words without "and" (101 -> "one hundred one")."""
    return _engine().number_to_words(str(number), andword="")


def _dollars(m: re.Match) -> str:
    amount = m.group(1)
    parts = amount.split(".")
    if len(parts) > 2:
        return f" {amount} dollars "
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    dollar_unit = "dollar" if dollars == 1 else "dollars"
    cent_unit = "cent" if cents == 1 else "cents"
    if dollars and cents:
        return f" {dollars} {dollar_unit}, {cents} {cent_unit} "
    if dollars:
        return f" {dollars} {dollar_unit} "
    if cents:
        return f" {cents} {cent_unit} "
    return " zero dollars "


def _fraction(m: re.Match) -> str:
    numerator, denominator = int(m.group(1)), int(m.group(2))
    if denominator == 2:
        text = "one half" if numerator == 1 else f"{_words(numerator)} halves"
    elif denominator == 4:
        text = "one quarter" if numerator == 1 else f"{_words(numerator)} quarters"
    else:
        # always singular: "three eighth"; dates too: 12/25 -> "twelve twenty-fifth"
        text = f"{_words(numerator)} {_engine().ordinal(_words(denominator))}"
    return f" {text} "


def _ordinal(m: re.Match) -> str:
    return f" {_engine().number_to_words(m.group(0))} "


def _integer(m: re.Match) -> str:
    num = int(m.group(0))
    if 1000 < num < 3000 and num != 2000:
        if 2000 < num < 2010:
            text = "two thousand " + _words(num % 100)
        elif num % 100 == 0:
            text = _words(num // 100) + " hundred"
        else:
            # read in pairs, "oh" for a zero: 1999 -> nineteen ninety-nine, 1905 -> nineteen oh five
            text = _engine().number_to_words(str(num), andword="", zero="oh", group=2).replace(", ", " ")
    elif num == 2000:
        text = "two thousand"
    else:
        text = _words(num)
    return f" {text} "


def normalize_numbers(text: str) -> str:
    """Spell out the numbers in ``text`` in the reference order (docs/reference.md §9.5.2, steps 1-8)."""
    text = _COMMA_NUMBER.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS.sub(r"\1 pounds", text)
    text = _DOLLARS.sub(_dollars, text)
    text = _FRACTION.sub(_fraction, text)
    text = _DECIMAL.sub(r"\1 point \2", text)
    text = _PERCENT.sub(r"\1 percent ", text)
    text = _ORDINAL.sub(_ordinal, text)
    return _INTEGER.sub(_integer, text)
