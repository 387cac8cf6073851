"""Parity of the text front end with the reference G2P records (text -> phonemes -> ids).

Records come from ``$METIS_G2P_GOLDEN`` (any JSONL of the same format) or ``tests/fixtures/g2p_golden.jsonl``;
the trace is read from beside them (``<stem>_trace.jsonl``, else ``g2p_golden_trace.jsonl``). Each record is one
test named by its text. Records that cannot be checked here are skipped as a group, with their count and the
reason, in ``test_skipped_group``:

* Mandarin/mixed records when the reference's Mandarin data files are not supplied
  (``$METIS_CHINESE_LEXICON``, ``$METIS_POLY_BERT_ONNX``);
* on an espeak-ng other than 1.51, records whose raw espeak output (run here, through our own path) differs from
  the one in the trace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from metis.text import G2P, G2PError, segment_by_script
from metis.text.espeak import ESPEAK_LANGUAGES, espeak_version, get_tokenizer
from metis.text.mandarin import MandarinResources, MissingMandarinResources

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_ESPEAK = (1, 51)


def _records_path() -> Path:
    return Path(os.environ.get("METIS_G2P_GOLDEN") or FIXTURES / "g2p_golden.jsonl")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _trace_path(records: Path) -> Path | None:
    for candidate in (records.with_name(records.stem + "_trace.jsonl"), records.with_name("g2p_golden_trace.jsonl")):
        if candidate.is_file():
            return candidate
    return None


def _labels(record: dict) -> set[str]:
    """The cleaners a record goes through."""
    function = record.get("function") or ("chn_eng_g2p" if record["language"] in ("en", "zh") else "g2p")
    if function == "chn_eng_g2p":
        segments = record.get("segments") or segment_by_script(record["text"])
        return {label for _, label in segments}
    return {record["language"]}


def _espeak_unchanged(record: dict, trace: dict[str, list] | None) -> bool:
    """Whether every espeak call of the record gives, here, the raw output recorded in the trace."""
    if trace is None or record["text"] not in trace:
        return False
    for stage in trace[record["text"]]:
        name = stage["stage"]
        if name.startswith("espeak["):
            language = name[len("espeak[") : name.index("]")]
            if get_tokenizer(ESPEAK_LANGUAGES[language]).raw(stage["in"]) != stage["out"]:
                return False
    return True


def _plan():
    """(runnable records, {group reason: count}) decided from the records, the trace and the environment."""
    path = _records_path()
    records = _read_jsonl(path)
    trace_file = _trace_path(path)
    trace = {t["text"]: t["trace"] for t in _read_jsonl(trace_file)} if trace_file else None

    try:
        MandarinResources.resolve()
        mandarin_reason = None
    except MissingMandarinResources as e:
        mandarin_reason = f"Mandarin/mixed records need the reference data files: {e}"

    version = espeak_version()
    espeak_reason = (
        f"records whose raw espeak output on espeak-ng {'.'.join(map(str, version))} differs from the trace "
        f"(the records hold for espeak-ng 1.51{'' if trace_file else '; no trace file found beside ' + str(path)})"
    )
    runnable, skipped = [], {}
    for record in records:
        labels = _labels(record)
        if mandarin_reason and "zh" in labels:
            skipped[mandarin_reason] = skipped.get(mandarin_reason, 0) + 1
        elif version != REFERENCE_ESPEAK and labels & set(ESPEAK_LANGUAGES) and not _espeak_unchanged(record, trace):
            skipped[espeak_reason] = skipped.get(espeak_reason, 0) + 1
        else:
            runnable.append(record)
    return runnable, skipped


RUNNABLE, SKIPPED = _plan()


@pytest.fixture(scope="module")
def g2p() -> G2P:
    return G2P()


def _record_id(record: dict) -> str:
    text = record["text"]
    return f"{record['language']}:{text[:50]!r}"


@pytest.mark.parametrize("record", RUNNABLE, ids=[_record_id(r) for r in RUNNABLE])
def test_record(g2p: G2P, record: dict):
    if record.get("error"):
        with pytest.raises(G2PError):
            g2p(record["text"], language=record["language"])
        return
    if record.get("function") == "g2p":
        phonemes, ids = g2p.cleaner_g2p(record["text"], record["language"])
    else:
        phonemes, ids = g2p(record["text"], language=record["language"])
    assert phonemes == record["phonemes"]
    assert ids == record["ids"]


@pytest.mark.parametrize("reason", list(SKIPPED), ids=[f"group{i}" for i in range(len(SKIPPED))])
def test_skipped_group(reason: str):
    pytest.skip(f"{SKIPPED[reason]} of the records in {_records_path()} skipped: {reason}")


def test_records_were_read():
    assert RUNNABLE or SKIPPED, f"no records in {_records_path()}"


def test_changed_espeak_output_is_detected():
    """The check that decides, on another espeak-ng, which records still apply."""
    text = "She sells sea shells by the sea shore."
    english = next(r for r in _read_jsonl(FIXTURES / "g2p_golden.jsonl") if r["text"] == text)
    trace = {t["text"]: t["trace"] for t in _read_jsonl(FIXTURES / "g2p_golden_trace.jsonl")}
    stages = [dict(s) for s in trace[english["text"]]]
    for stage in stages:
        if stage["stage"].startswith("espeak["):
            stage["out"] = [out.replace("oːɹ", "ɔːɹ") for out in stage["out"]]  # what espeak-ng 1.52 gives
    assert not _espeak_unchanged(english, {english["text"]: stages})
    assert not _espeak_unchanged(english, None)
    if espeak_version() == REFERENCE_ESPEAK:
        assert _espeak_unchanged(english, trace)
