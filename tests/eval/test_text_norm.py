import pytest

from metis.eval.text_norm import normalize_chars, normalize_english


@pytest.mark.parametrize("text, expected", [
    ("I almost think I can remember feeling a little different.",
     "i almost think i can remember feeling a little different"),
    ("Mr. Smith paid $20 for twenty-five apples!", "mister smith paid 20 dollars for 25 apples"),
    ("In nineteen eighty four, the colour was grey.", "in 1984 the color was gray"),
    ("It is the twenty first of May; one hundred and five people came.", "it is the 21st of may 105 people came"),
    ("He won't go, Dr. Who's there? [laughter]", "he will not go doctor who's there"),
    ("two point five kids, 50% of the time, 1,000 times", "2.5 kids 50 percent of the time 1000 times"),
    ("one thousand two hundred thirty four", "1234"),
    ("Three million people", "3000000 people"),
    ("Wait a second, the third one", "wait a second the 3rd 1"),
    ("Uh, um, it's OK", "it's ok"),
    ("Café naïve \u201cquoted\u201d", "cafe naive quoted"),
    ("We'd been there; they'll come; I'm sure", "we had been there they will come i am sure"),
])
def test_english(text, expected):
    assert normalize_english(text) == expected


def test_same_meaning_normalises_the_same():
    assert normalize_english("Twenty-Five") == normalize_english("25")
    assert normalize_english("ninety nine") == normalize_english("99")


def test_chars():
    assert normalize_chars("你好，世界！ Hi") == "你好世界hi"
