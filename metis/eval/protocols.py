"""Test-set readers and per-task metric sets.

Every reader returns ``Item``s: the generated file to score plus what the metrics compare it with.
Generated audio lives in ``gen_dir``, one file per utterance, named by the item id (``<id>.wav``).

Layouts read (the user points at their own copy):
- manifest (jsonl): one object per line with ``wav`` (required) and optional ``id``, ``reference``,
  ``prompt``, ``text``, ``input``, ``lang``, ``subset``; relative paths are relative to the manifest.
- folder: every ``*.wav`` in ``gen_dir``; text from ``<stem>.txt`` beside it, reference from a
  ``reference_dir`` file of the same name, prompt from a ``prompt_dir`` file of the same name.
- SeedTTS-eval ``meta.lst`` (test-en / test-zh / test-hard): ``id|prompt_text|prompt_wav|target_text``
  with an optional 5th field, the ground-truth wav of the target text (the source for VC).
- DNS Challenge 2020 test set: ``synthetic/{no_reverb,with_reverb}/{noisy,clean}/*.wav`` (clean files are
  ``clean_fileid_N.wav``) and ``real_recordings/*.wav``; outputs under ``gen_dir`` with the same path
  relative to the test-set root, or flat by file name.
- Libri2Mix test: ``<root>/metadata/mixture_test_<mix>.csv`` (``mixture_ID,mixture_path,source_1_path,
  source_2_path,...``) with paths relative to the dataset root or absolute (re-rooted when absent); the
  target is source 1 unless an enrollment file (TSV ``mixture_ID<TAB>s1|s2<TAB>enrollment.wav``) says
  otherwise; transcripts come from a LibriSpeech test-clean copy (``*.trans.txt``) when given.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from metis import tasks as registry
from metis.atomic import write_text

#: the metric set per task, from the registry (docs/reference.md §10.8 for the published tasks): intrusive metrics run
#: only where a clean reference exists
TASK_METRICS: dict[str, list[str]] = {name: list(spec.metrics) for name, spec in registry.TASKS.items() if spec.metrics}
#: tasks whose input (noisy speech, mixture) is scored too, for before/after comparisons
TASKS_WITH_INPUT = {name for name, spec in registry.TASKS.items() if spec.score_input}


@dataclass
class Item:
    id: str
    wav: Path
    reference: Path | None = None
    prompt: Path | None = None
    text: str | None = None
    input: Path | None = None
    lang: str = "en"
    subset: str = "all"

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if v is not None}


def _path(base: Path, value, field: str, where: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: field '{field}' must be a path string, got {type(value).__name__}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def read_manifest(path: str | Path) -> list[Item]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(rec, dict) or "wav" not in rec:
            raise ValueError(f"{where}: each line needs a 'wav' field")
        wav = _path(path.parent, rec["wav"], "wav", where)
        items.append(Item(
            id=str(rec.get("id") or wav.stem), wav=wav,
            reference=_path(path.parent, rec.get("reference"), "reference", where),
            prompt=_path(path.parent, rec.get("prompt"), "prompt", where),
            text=rec.get("text"), input=_path(path.parent, rec.get("input"), "input", where),
            lang=str(rec.get("lang", "en")), subset=str(rec.get("subset", "all")),
        ))
    if not items:
        raise ValueError(f"manifest {path} has no items")
    return items


def write_manifest(items: list[Item], path: str | Path) -> None:
    write_text(path, "".join(json.dumps(it.to_json(), ensure_ascii=False) + "\n" for it in items))


def read_folder(gen_dir: str | Path, *, reference_dir: str | Path | None = None,
                prompt_dir: str | Path | None = None, lang: str = "en") -> list[Item]:
    gen_dir = Path(gen_dir)
    wavs = sorted(gen_dir.glob("*.wav"))
    if not wavs:
        raise FileNotFoundError(f"no .wav files in {gen_dir}")
    items = []
    for w in wavs:
        txt = w.with_suffix(".txt")
        ref = Path(reference_dir) / w.name if reference_dir else None
        prm = Path(prompt_dir) / w.name if prompt_dir else None
        items.append(Item(id=w.stem, wav=w, reference=ref if ref and ref.is_file() else None,
                          prompt=prm if prm and prm.is_file() else None,
                          text=txt.read_text(encoding="utf-8").strip() if txt.is_file() else None, lang=lang))
    return items


def read_seedtts(meta: str | Path, gen_dir: str | Path, *, task: str = "tts", lang: str | None = None) -> list[Item]:
    """SeedTTS-eval meta list. For ``task="vc"`` the 5th field (ground-truth speech) is the source and
    the reference for nothing intrusive (VC output differs in timbre): it is kept as ``input``."""
    meta, gen_dir = Path(meta), Path(gen_dir)
    if not meta.is_file():
        raise FileNotFoundError(f"SeedTTS meta list not found: {meta}")
    if lang is None:
        lang = "zh" if "zh" in meta.parent.name or "zh" in meta.stem else "en"
    subset = (meta.parent.name or "seedtts") + ("-hard" if "hard" in meta.stem else "")  # en, zh, zh-hard
    items = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        f = line.rstrip("\n").split("|")
        if len(f) not in (4, 5):
            raise ValueError(f"{meta}:{n}: expected 4 or 5 '|'-separated fields "
                             f"(id|prompt_text|prompt_wav|target_text[|target_wav]), got {len(f)}")
        gt = meta.parent / f[4] if len(f) == 5 and f[4] else None
        if task == "vc" and gt is None:
            raise ValueError(f"{meta}:{n}: VC needs the 5th field (source wav)")
        items.append(Item(id=f[0], wav=gen_dir / f"{f[0]}.wav", prompt=meta.parent / f[2], text=f[3],
                          input=gt if task == "vc" else None, lang=lang, subset=subset))
    return items


def _find_output(gen_dir: Path, rel: Path) -> Path:
    nested = gen_dir / rel
    return nested if nested.is_file() else gen_dir / rel.name


def read_dns2020(test_root: str | Path, gen_dir: str | Path) -> list[Item]:
    root, gen_dir = Path(test_root), Path(gen_dir)
    items = []
    for cond in ("no_reverb", "with_reverb"):
        noisy_dir = root / "synthetic" / cond / "noisy"
        for noisy in sorted(noisy_dir.glob("*.wav")):
            fid = noisy.stem.rsplit("fileid_", 1)
            if len(fid) != 2:
                raise ValueError(f"DNS noisy file {noisy} has no 'fileid_N' in its name")
            clean = root / "synthetic" / cond / "clean" / f"clean_fileid_{fid[1]}.wav"
            items.append(Item(id=f"{cond}/{noisy.stem}", wav=_find_output(gen_dir, noisy.relative_to(root)),
                              reference=clean if clean.is_file() else None, input=noisy, subset=cond))
    for noisy in sorted((root / "real_recordings").glob("*.wav")):
        items.append(Item(id=f"real/{noisy.stem}", wav=_find_output(gen_dir, noisy.relative_to(root)),
                          input=noisy, subset="real_recordings"))
    if not items:
        raise FileNotFoundError(f"no DNS 2020 test files under {root} (expected synthetic/<cond>/noisy/*.wav "
                                "or real_recordings/*.wav)")
    return items


def _librispeech_texts(root: Path | None) -> dict[str, str]:
    texts: dict[str, str] = {}
    if root is None:
        return texts
    for trans in Path(root).rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            uid, _, words = line.partition(" ")
            texts[uid] = words.strip()
    if not texts:
        raise FileNotFoundError(f"no LibriSpeech *.trans.txt files under {root}")
    return texts


def read_libri2mix(root: str | Path, gen_dir: str | Path, *, mix: str = "mix_clean",
                   enrollment: str | Path | None = None, librispeech: str | Path | None = None) -> list[Item]:
    root, gen_dir = Path(root), Path(gen_dir)
    meta = root / "metadata" / f"mixture_test_{mix}.csv"
    if not meta.is_file():
        found = sorted(root.rglob(f"mixture_test_{mix}.csv"))
        if not found:
            raise FileNotFoundError(f"Libri2Mix metadata mixture_test_{mix}.csv not found under {root}")
        meta = found[0]
    targets: dict[str, tuple[str, Path]] = {}
    if enrollment:
        for n, line in enumerate(Path(enrollment).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            f = line.split("\t")
            if len(f) != 3 or f[1] not in ("s1", "s2"):
                raise ValueError(f"{enrollment}:{n}: expected 'mixture_ID<TAB>s1|s2<TAB>enrollment.wav'")
            targets[f[0]] = (f[1], _path(Path(enrollment).parent, f[2], "enrollment", f"{enrollment}:{n}"))
    texts = _librispeech_texts(Path(librispeech) if librispeech else None)

    def resolve(p: str) -> Path:
        # LibriMix writes absolute paths of the machine that generated it: re-root the
        # <split>/<kind>/<file>.wav tail under the user's copy when they do not exist here
        q = Path(p)
        if q.is_absolute():
            return q if q.exists() else root.joinpath(*q.parts[-3:])
        return root / q

    items = []
    with open(meta, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            for col in ("mixture_ID", "mixture_path", "source_1_path", "source_2_path"):
                if col not in row:
                    raise ValueError(f"{meta}:{n}: missing column '{col}'")
            mid = row["mixture_ID"]
            which, enroll = targets.get(mid, ("s1", None))
            src = resolve(row["source_1_path" if which == "s1" else "source_2_path"])
            uid = mid.split("_")[0 if which == "s1" else 1]
            items.append(Item(id=mid, wav=gen_dir / f"{mid}.wav", reference=src, prompt=enroll,
                              text=texts.get(uid), input=resolve(row["mixture_path"]), subset=mix))
    return items
