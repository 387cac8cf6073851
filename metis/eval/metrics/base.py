"""The one interface every metric follows.

A metric scores one generated waveform and returns named floats. What it needs besides the waveform
(``reference`` clean audio, speaker ``prompt`` audio, ``text``) is declared in ``needs``; the runner skips
a metric for an item that lacks one. Heavy models load on first use, never at construction.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from metis.audio import Audio


class MetricUnavailable(RuntimeError):
    """A metric cannot run here (missing package or user checkpoint); the message says what to supply."""


def speechmos_file(*parts: str) -> Path:
    """A model file shipped inside the installed ``speechmos`` package; MetricUnavailable if it is missing."""
    import speechmos

    f = Path(speechmos.__file__).parent.joinpath(*parts)
    if not f.is_file():
        raise MetricUnavailable(f"speechmos install lacks {f}; reinstall speechmos")
    return f


def onnx_session(path: Path, threads: int = 0):
    """A CPU onnxruntime session for `path`; `threads` > 0 caps its intra-op threads (0: onnxruntime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Metric(ABC):
    #: short name used on the command line and in reports
    name: ClassVar[str]
    #: inputs the metric needs besides the waveform: any of "reference", "prompt", "text"
    needs: ClassVar[tuple[str, ...]] = ()
    #: True when a higher value is better, per output key prefix (for plots and notes)
    higher_is_better: ClassVar[bool] = True
    #: a line for reports: which model or settings produced the numbers
    description: str = ""

    @abstractmethod
    def score(
        self,
        wav: np.ndarray,
        sr: int,
        *,
        reference: Audio | None = None,
        prompt: Audio | None = None,
        text: str | None = None,
        lang: str = "en",
    ) -> dict[str, float]:
        """Score one waveform ``wav`` (time,) at rate ``sr``; returns ``{key: value}``."""

    def extras(self) -> dict[str, str]:
        """Text from the last ``score`` call worth keeping per utterance (e.g. an ASR hypothesis)."""
        return {}

    def check(self) -> None:
        """Raise MetricUnavailable when the metric cannot run (called once before a run)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description or self.name})"


def require(module: str, package: str) -> None:
    """Import check with an install hint naming the pip package."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MetricUnavailable(f"module '{module}' is missing: pip install {package}")
