"""Evaluation of inference outputs: WER/CER, speaker similarity, DNSMOS, neural MOS and intrusive metrics.

``python -m metis.eval --help`` scores a folder or manifest of generated audio per task (see
``metis.eval.cli``); ``metis.eval.metrics`` holds the metric classes behind one ``Metric.score`` interface.
"""
from metis.audio import Audio, load
from metis.eval.metrics import METRIC_NAMES, Metric, MetricOptions, MetricUnavailable, build_metrics
from metis.eval.protocols import TASK_METRICS, Item, read_manifest, write_manifest
from metis.eval.report import summarize, write_report
from metis.eval.runner import evaluate

__all__ = ["Audio", "load", "Metric", "MetricOptions", "MetricUnavailable", "METRIC_NAMES", "build_metrics",
           "TASK_METRICS", "Item", "read_manifest", "write_manifest", "evaluate", "summarize", "write_report"]
