"""PLCMOS v2 (packet-loss concealment MOS, non-intrusive), with the ONNX model shipped in ``speechmos``.

The model reads a 16 kHz clip's log-power spectrogram (512-point Hamming STFT, hop 256) together with
a random 64-d "rater" embedding and predicts that rater's MOS; the score is the mean over
``embed_rounds`` raters. ``speechmos`` draws the raters from numpy's global generator, so two calls
on the same clip differ; here they come from a generator seeded by ``seed``, so a clip always gets
the same score.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metis.audio import resample
from metis.eval.metrics.base import Metric, onnx_session, require, speechmos_file

SR = 16000


class PLCMOS(Metric):
    name = "plcmos"
    description = "PLCMOS v2 (speechmos ONNX model, 15 seeded rater embeddings)"

    def __init__(self, embed_rounds: int = 15, seed: int = 0, threads: int = 0):
        self.embed_rounds = int(embed_rounds)
        self.seed = int(seed)
        self.threads = threads
        self._model = None

    def check(self) -> None:
        require("onnxruntime", "onnxruntime")
        require("speechmos", "speechmos")
        self._model_file()

    @staticmethod
    def _model_file() -> Path:
        return speechmos_file("plcmos_models", "plcmos_v2.onnx")

    def _load(self):
        if self._model is None:
            from speechmos.plcmos import PLCMOS as Features  # its spectrogram transform, our session

            self._model = (Features.__new__(Features), onnx_session(self._model_file(), self.threads))
        return self._model

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        features, session = self._load()
        x = np.clip(resample(wav, sr, SR), -1.0, 1.0).astype(np.float64)
        spec = np.float32(features.stft_transform(x))[None, None]  # (1, 1, frames, 257)
        raters = np.random.default_rng(self.seed).normal(size=(self.embed_rounds, 64)).astype(np.float32)
        scores = [float(np.asarray(session.run(None, {"degraded_audio": spec, "rater_embed": r[None]})[0]).reshape(-1)[0])
                  for r in raters]
        return {"plcmos": float(np.mean(scores))}
