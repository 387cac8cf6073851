import math

import pytest

from metis.eval.report import markdown, metric_keys, summarize


def _rows():
    return [
        {"id": "a", "subset": "en", "seconds": 3.0, "wer": 0.5, "wer_errors": 1.0, "wer_ref_len": 2.0,
         "sim_wavlm": 0.6, "hypothesis": "x"},
        {"id": "b", "subset": "en", "seconds": 3.0, "wer": 0.0, "wer_errors": 0.0, "wer_ref_len": 8.0,
         "sim_wavlm": 0.8},
        {"id": "c", "subset": "zh", "seconds": 6.0, "dnsmos_ovrl": 3.0, "input_dnsmos_ovrl": 2.0},
    ]


def test_summary_means_and_corpus_wer():
    s = {r["subset"]: r for r in summarize(_rows())}
    assert s["en"]["wer"] == pytest.approx(0.25)  # mean of utterance WERs
    assert s["en"]["wer_corpus"] == pytest.approx(0.1)  # 1 error in 10 words
    assert s["en"]["sim_wavlm"] == pytest.approx(0.7)
    assert math.isnan(s["en"]["dnsmos_ovrl"]) and s["zh"]["dnsmos_ovrl"] == 3.0
    assert s["all"]["n"] == 3 and s["all"]["hours"] == pytest.approx(12 / 3600, abs=1e-4)
    assert metric_keys(_rows()) == ["wer", "wer_corpus", "sim_wavlm", "dnsmos_ovrl", "input_dnsmos_ovrl"]


def test_markdown_scales_like_the_papers_and_adds_published_rows():
    md = markdown(summarize(_rows()), task="tts", metrics=["m"], notes=["a note"], stats={"failures": {"wer": 1}},
                  protocol="seedtts")
    assert "| en | 2 | 0 | 0.0017 | 25.00 | 10.00 | 0.700 | – |" in md  # n, not fully scored, hours, ...
    assert "| zh | dnsmos_ovrl | 2.000 | 3.000 | +1.000 |" in md
    assert "Metis-TTS full FT 10K h" in md and "| en | MaskGCT (MaskGCT Table 2) | 2.623 | 0.717 |" in md
    assert "- a note" in md and "wer: 1" in md
    l2s = markdown(summarize(_rows()[:2]), task="l2s", metrics=[], notes=[], stats={})
    assert "sim_wavlm (×100)" in l2s and "| 70.00 |" in l2s and "Published" not in l2s
