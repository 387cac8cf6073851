"""Batch manifests: one JSON request per line in, one result per line out.

    {"task": "se", "input": "noisy/a.wav", "output": "a.wav"}
    {"task": "tts", "prompt": "ref.wav", "prompt_text": "...", "text": "...", "seed": 3, "overrides": {"n_timesteps": 50}}
    {"task": "vc", "input": "src.wav", "prompt": "ref.wav", "overrides": {"s2a_full": {"cfg": 0}}}

Relative input paths are read relative to the manifest's folder; outputs relative to `output_dir`
(default `<line number>_<task>.wav`). A line that cannot be parsed becomes a failed result; the
others run. `results.jsonl` (beside the outputs) gets one line per request: its output, ok / error,
seconds of audio, compute seconds and real-time factor, and the resolved settings.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from metis.atomic import write_text
from metis.inference.pipeline import Pipeline, Result
from metis.inference.tasks import Request

REQUEST_KEYS = tuple(f.name for f in fields(Request))
PATH_KEYS = ("input", "prompt", "video_features")


def parse_line(line: str, number: int, base: Path, output_dir: Path) -> Request:
    """One manifest line -> Request (paths resolved); errors name the line number and the key."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {number}: not valid JSON ({e})") from e
    if not isinstance(row, dict):
        raise ValueError(f"line {number}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(REQUEST_KEYS))
    if unknown:
        raise ValueError(f"line {number}: unknown key(s) {unknown}; known: {list(REQUEST_KEYS)}")
    if "task" not in row:
        raise ValueError(f"line {number}: missing 'task'")
    for key in PATH_KEYS:
        if row.get(key):
            p = Path(row[key]).expanduser()
            row[key] = str(p if p.is_absolute() else base / p)
    out = Path(row.get("output") or f"{number:05d}_{row['task']}.wav")
    row["output"] = str(out if out.is_absolute() else output_dir / out)
    if not isinstance(row.get("overrides", {}), dict):
        raise ValueError(f"line {number}: 'overrides' must be an object")
    return Request(**row)


def read_manifest(path: str | Path, output_dir: str | Path) -> list[Request | Exception]:
    """Every non-empty line of a jsonl manifest -> a Request, or the error that line raised."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    out: list[Request | Exception] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                out.append(parse_line(line, number, path.parent, Path(output_dir)))
            except Exception as e:  # noqa: BLE001 - reported as that row's result
                out.append(e)
    return out


def run_manifest(pipeline: Pipeline, manifest: str | Path, output_dir: str | Path,
                 results_path: str | Path | None = None) -> list[Result]:
    """Run every request of `manifest`; write `results.jsonl` (default in output_dir). -> results in line order."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(manifest, output_dir)
    requests = [r for r in rows if isinstance(r, Request)]
    done = iter(pipeline.run(requests))
    results = []
    for i, row in enumerate(rows):
        if isinstance(row, Request):
            res = next(done)
        else:
            res = Result(index=-1, task="?", output=None, ok=False, error=f"{type(row).__name__}: {row}")
        res.index = i
        results.append(res)
    write_results(results, results_path or output_dir / "results.jsonl")
    return results


def write_results(results: list[Result], path: str | Path) -> Path:
    return write_text(path, "".join(json.dumps(r.to_json()) + "\n" for r in results))
