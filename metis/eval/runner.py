"""Score a list of items with a list of metrics: one row per utterance."""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from functools import lru_cache

from metis.audio import Audio, AudioError, load
from metis.eval.metrics.base import Metric, MetricUnavailable
from metis.eval.protocols import Item

log = logging.getLogger(__name__)


@lru_cache(maxsize=256)
def load_cached(path: str) -> Audio:
    """`load` for files read many times in one run (prompts shared by several utterances)."""
    return load(path)


def _failure(e: Exception, what: str = "") -> str:
    """The failure counter an item's unusable audio goes under: `unreadable` (missing, not audio) or the
    reason `metis.audio.check` refused it for (`clipped_audio`, `constant_audio`, `nan_audio`, ...);
    `what` tells the scored input's failures apart (`unreadable_input`)."""
    why = e.reason if isinstance(e, AudioError) and e.reason != "undecodable_audio" else "unreadable"
    return f"{why}_{what}" if what else why


def score_audio(metrics: list[Metric], audio: Audio, item: Item, reference: Audio | None, prompt: Audio | None,
                prefix: str, row: dict, failures: dict[str, int], timing: dict[str, float]) -> None:
    given = {"reference": reference, "prompt": prompt, "text": item.text}
    for m in metrics:
        if any(given[n] is None for n in m.needs):
            continue
        t = time.perf_counter()
        try:
            out = m.score(audio.samples, audio.sr, reference=reference, prompt=prompt, text=item.text,
                          lang=item.lang)
        except MetricUnavailable:
            raise
        except Exception as e:  # one bad utterance (too short, silent, lengths apart) must not stop a test-set run
            failures[m.name] += 1
            log.warning("%s failed on %s%s: %s", m.name, prefix, item.id, e)
            _flag(row, f"{prefix}{m.name}: {e}")
            continue
        finally:
            timing[m.name] += time.perf_counter() - t
        row.update({prefix + k: v for k, v in out.items()})
        row.update({prefix + k: v for k, v in m.extras().items()})


def evaluate(items: list[Item], metrics: list[Metric], *, score_input: bool = False,
             progress: bool = True) -> tuple[list[dict], dict]:
    """Rows ``{id, subset, seconds, <metric keys>, input_<metric keys>}`` and run stats
    (failures per metric, metric seconds, audio seconds)."""
    missing = [str(it.wav) for it in items if not it.wav.is_file()]
    if missing and len(missing) == len(items):
        raise FileNotFoundError(f"none of the {len(items)} generated file(s) exists, first: {missing[0]}")
    failures: dict[str, int] = defaultdict(int)
    timing: dict[str, float] = defaultdict(float)
    rows, total_s = [], 0.0
    for i, it in enumerate(items):
        row = {"id": it.id, "subset": it.subset, "seconds": 0.0}
        if it.text is not None:
            row["text"] = it.text
        try:  # an unusable item is counted under its reason and flagged; the others are still scored and written
            audio = load(it.wav)
            reference = load_cached(str(it.reference)) if it.reference else None
            prompt = load_cached(str(it.prompt)) if it.prompt else None
        except Exception as e:  # noqa: BLE001 - missing, truncated, not audio, refused by the audio check
            why = _failure(e)
            failures[why] += 1
            log.warning("%s item %s: %s", why, it.id, e)
            rows.append(_flag(row, f"{why}: {e}"))
            continue
        row["seconds"] = round(audio.seconds, 3)
        score_audio(metrics, audio, it, reference, prompt, "", row, failures, timing)
        if score_input and it.input is not None:
            try:
                source = load(it.input)
            except Exception as e:  # noqa: BLE001
                why = _failure(e, "input")
                failures[why] += 1
                _flag(row, f"{why}: {e}")
            else:
                score_audio(metrics, source, it, reference, prompt, "input_", row, failures, timing)
        total_s += audio.seconds
        rows.append(row)
        if progress:
            shown = {k: v for k, v in row.items() if isinstance(v, float) and not k.endswith(("_errors", "_ref_len"))
                     and k != "seconds" and not math.isnan(v)}
            log.info("[%d/%d] %s %s", i + 1, len(items), it.id, " ".join(f"{k}={v:.3f}" for k, v in shown.items()))
    nonfinite: dict[str, int] = defaultdict(int)  # scores such as SI-SDR of identical signals (inf)
    for row in rows:
        for k, v in row.items():
            if isinstance(v, float) and math.isinf(v):
                nonfinite[k] += 1
    return rows, {"failures": dict(failures), "nonfinite": dict(nonfinite), "metric_seconds": dict(timing),
                  "audio_seconds": total_s}


def _flag(row: dict, problem: str) -> dict:
    """Note a problem in the row's `errors` column (the CSV shows which items were not fully scored)."""
    row["errors"] = f"{row['errors']}; {problem}" if row.get("errors") else problem
    return row
