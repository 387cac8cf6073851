"""DNSMOS P.835 (SIG / BAK / OVRL) and P.808, with the ONNX models shipped in the ``speechmos`` package.

The protocol follows Microsoft's DNSMOS evaluation: 16 kHz audio, 9.01 s windows hopped by 1 s (a short
clip is tiled up to one window), the P.835 raw outputs mapped by the published cubic/quadratic polynomials
and the window scores averaged. P.808 reads a 120-band log-mel spectrogram of the same window.
The windows of one clip run as one ONNX batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metis.eval.metrics.base import Metric, onnx_session, require, speechmos_file
from metis.audio import resample

SR = 16000
WINDOW_S = 9.01
HOP_S = 1.0
# Polynomials mapping the raw P.835 network outputs to MOS (non-personalised DNSMOS models)
_POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_POLY_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


def windows(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """Split a 16 kHz clip into (n, 9.01 s) windows hopped by 1 s; a short clip is tiled to one window."""
    n = int(WINDOW_S * sr)
    while len(x) < n:
        x = np.concatenate([x, x])
    count = int(np.floor(len(x) / sr) - WINDOW_S) + 1
    segs = [x[int(i * HOP_S * sr): int(i * HOP_S * sr) + n] for i in range(count)]
    return np.stack([s for s in segs if len(s) == n]).astype(np.float32)


def p808_melspec(seg: np.ndarray) -> np.ndarray:
    """(time,) -> (frames, 120) normalised log-mel, as the P.808 model was trained on."""
    import librosa

    mel = librosa.feature.melspectrogram(y=seg, sr=SR, n_fft=321, hop_length=160, n_mels=120)
    return ((librosa.power_to_db(mel, ref=np.max) + 40) / 40).T


class DNSMOS(Metric):
    name = "dnsmos"
    description = "DNSMOS P.835 SIG/BAK/OVRL + P.808 (speechmos ONNX models)"

    def __init__(self, threads: int = 0):
        self.threads = threads
        self._sessions = None

    def check(self) -> None:
        require("onnxruntime", "onnxruntime")
        require("speechmos", "speechmos")
        require("librosa", "librosa")
        self._model_files()

    @staticmethod
    def _model_files() -> tuple[Path, Path]:
        return speechmos_file("dnsmos_models", "sig_bak_ovr.onnx"), speechmos_file("dnsmos_models", "model_v8.onnx")

    def _load(self):
        if self._sessions is None:
            self._sessions = tuple(onnx_session(f, self.threads) for f in self._model_files())
        return self._sessions

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        p835, p808 = self._load()
        x = np.clip(resample(wav, sr, SR), -1.0, 1.0)
        segs = windows(x)
        raw = p835.run(None, {"input_1": segs})[0]  # (n, 3): sig, bak, ovr
        mels = np.stack([p808_melspec(s[:-160]) for s in segs]).astype(np.float32)
        p808_mos = p808.run(None, {"input_1": mels})[0][:, 0]
        return {
            "dnsmos_sig": float(np.mean(_POLY_SIG(raw[:, 0]))),
            "dnsmos_bak": float(np.mean(_POLY_BAK(raw[:, 1]))),
            "dnsmos_ovrl": float(np.mean(_POLY_OVR(raw[:, 2]))),
            "dnsmos_p808": float(np.mean(p808_mos)),
        }
