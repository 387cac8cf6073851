"""`python infer.py` refuses audio that `metis.audio.check` rejects (NaN, all -1.0 16-bit, DC, clipped
flat, as input or as prompt): one error line naming the file, no output written, a non-zero exit."""

import json
import logging

import pytest

from metis.inference.cli import infer_and_exit
from tests.bad_audio import write_bad_wavs
from tests.inference.conftest import infer_config

CASES = ("nan", "all_nan", "minus_one_int16", "dc", "clipped_flat")
WHY = {"nan_audio": "NaN", "clipped_audio": "clipped flat", "constant_audio": "constant audio"}


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_single_request_with_a_bad_input_exits_non_zero_naming_the_file(repos, tmp_path, caplog):
    path, reason = write_bad_wavs(tmp_path / "in", names=("minus_one_int16",))["minus_one_int16"]
    cfg = infer_config(repos, ["task=se", f"input={path}", f"output={tmp_path / 'out.wav'}"])
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as e:
        infer_and_exit(cfg)
    assert e.value.code == 1
    [line] = errors(caplog)
    assert str(path) in line and WHY[reason] in line and "\n" not in line
    assert not (tmp_path / "out.wav").exists()


def test_manifest_of_bad_inputs_and_prompts_each_fail_with_one_line(repos, audio, tmp_path, caplog):
    bad = write_bad_wavs(tmp_path / "in", names=CASES)
    rows = [{"task": "se", "input": str(p), "output": f"se_{n}.wav"} for n, (p, _) in bad.items()]
    rows += [{"task": "tse", "input": str(audio["source"]), "prompt": str(p), "output": f"tse_{n}.wav"}
             for n, (p, _) in bad.items() if n in ("nan", "dc")]
    rows.append({"task": "se", "input": str(audio["source"]), "output": "good.wav"})  # the rest still runs
    man = tmp_path / "requests.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = infer_config(repos, [f"manifest={man}", f"output_dir={tmp_path / 'out'}"])
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as e:
        infer_and_exit(cfg)
    assert e.value.code == 1
    lines = errors(caplog)
    assert len(lines) == len(rows) - 1
    for row, line in zip(rows, lines):
        path = row.get("prompt") or row["input"]
        name = path.rsplit("/", 1)[1][:-len(".wav")]
        assert path in line and WHY[bad[name][1]] in line, line
        assert not (tmp_path / "out" / row["output"]).exists()
    assert (tmp_path / "out" / "good.wav").is_file()
