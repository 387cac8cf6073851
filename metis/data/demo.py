"""The offline demo corpus: `python -m metis.data demo` (no download).

Real speech: the Asterisk core prompts (G.722 studio recordings, one voice, ~25 min; transcripts
from core-sounds-en.txt.gz, lines `name: text`), decoded by ffmpeg to 16 kHz. Multi-speaker speech:
sentences from a seeded grammar spoken by espeak-ng voices (speaker = voice name; `en+f3`,
`en-us+m1`, ...; `en-gb+VARIANT` is avoided because espeak-ng ignores the variant there).

Three speaker-disjoint splits, so that both claims of the paper can be tested on it:
    train   the unlabelled pre-training pool: the Asterisk voice + `pretrain_voices`
    task    the fine-tuning set: other speakers (`task_voices`) saying other sentences, in shards of
            `task_shard_samples` utterances (fine-tune on the first k shards for a smaller set)
    val     held-out speakers (`val_voices`) in neither: what pre-training and fine-tuning validate on

Steps, each skipped when its output is complete (the build is idempotent):
    raw/       wav files + manifest.jsonl (split by speaker role)
    shards/{train,task,val}/   flac+json shards (metis.data.prepare)
    tokenizer/            the k-means demo tokenizer fitted on the train shards
    tokens/{train,task,val}/   token shards (metis.data.tokenize) -> what training reads
    demo.json             summary (hours, samples, speakers, shards, tokenizer identity)
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from metis import audio
from metis.atomic import write_json, write_text
from metis.data.prepare import discover_manifest, write_shards
from metis.data.shards import TOKENIZER_MEMBER, audio_ext, expand_shards, iter_tar

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
# 24 pre-training voices: with 6 the demo model learned the pool's voices, not to read its context, and
# stayed at the unigram's accuracy on held-out voices (docs/finetune.md, "The pre-trained demo model")
PRETRAIN_VOICES = ("en-us+m1", "en-us+f1", "en-us+f4", "en+m2", "en+f5", "en-029+f1",
                   "en-us+m2", "en-us+m4", "en-us+m5", "en-us+m6", "en-us+f3", "en-us+f5", "en+m1", "en+m5", "en+m6",
                   "en+f1", "en+f2", "en+f4", "en-029+m1", "en-029+f2", "en-us-nyc", "en-gb-x-rp", "en-gb-x-gbclan",
                   "en-gb-x-gbcwmd")
TASK_VOICES = ("en-us+m7", "en-us+f2", "en+m4")
VAL_VOICES = ("en-us+m3", "en+f3", "en-gb-scotland")
VOICES = PRETRAIN_VOICES + TASK_VOICES + VAL_VOICES
SPLITS = ("train", "task", "val")


@dataclass
class DemoConfig:
    out_dir: str = "data/demo"
    n_prompts: int | None = None  # Asterisk prompts to use (None: all with a spoken transcript)
    n_synth: int = 1200  # espeak-ng utterances of the pre-training voices (50 per voice)
    n_task: int = 150  # ... of the task voices (the fine-tuning set)
    n_val: int = 90  # ... of the held-out validation voices
    pretrain_voices: tuple[str, ...] = PRETRAIN_VOICES
    task_voices: tuple[str, ...] = TASK_VOICES
    val_voices: tuple[str, ...] = VAL_VOICES
    sample_rate: int = 16000
    min_dur: float = 0.4
    max_dur: float = 20.0
    shard_samples: int = 200
    task_shard_samples: int = 25  # the fine-tuning set in shards this small: set sizes k x 25
    n_clusters: int = 512
    max_fit_frames: int = 50_000
    seed: int = 0
    workers: int = 2  # parallel espeak-ng processes


# ---------------------------------------------------------------- text for espeak-ng
_WORDS = {
    "adj": "small bright quiet heavy narrow ancient yellow careful sudden gentle crowded empty distant "
           "wooden frozen busy curious patient silver hollow".split(),
    "noun": "river garden window teacher letter engine village basket ladder kitten harbour violin "
            "lantern bridge orchard message station blanket mirror compass".split(),
    "verb_past": "crossed painted opened followed repaired carried watched covered reached "
                 "visited described ignored measured borrowed".split(),
    "verb": "check bring paint open follow repair carry watch cover visit describe measure".split(),
    "prep": "near behind under beside across beyond inside".split(),
    "name": "Anna Marcus Priya Tomas Helen Kenji Olivia Samuel Farah Lucas Ingrid Diego".split(),
    "time": "noon midnight sunrise dinner the weekend the next meeting Friday evening".split(" "),
    "num": "two three four seven eleven twelve fifteen twenty thirty forty-two ninety".split(),
    "place": "market station library kitchen harbour museum hospital stadium".split(),
}
_TEMPLATES = (
    "The {adj} {noun} {verb_past} the {noun} {prep} the {place}.",
    "Please {verb} the {adj} {noun} before {time}.",
    "{name} said that the {noun} was far too {adj} for the {place}.",
    "Did you see the {adj} {noun} {prep} the old {noun}?",
    "We counted {num} {noun}s at the {place} this morning.",
    "If the {noun} is {adj}, {name} will {verb} it after {time}.",
    "Nobody expected {name} to {verb} the {noun} so quickly.",
    "Of all the {noun}s in the {place}, the {adj} one {verb_past} first.",
    "{name} and {name} {verb_past} {num} {adj} {noun}s yesterday.",
    "Why would anyone {verb} a {adj} {noun} at {time}?",
)


def sentences(n: int, seed: int = 0) -> list[str]:
    """n varied English sentences from a seeded grammar (deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(_TEMPLATES)
        s = t
        while "{" in s:
            a = s.index("{")
            b = s.index("}", a)
            s = s[:a] + rng.choice(_WORDS[s[a + 1:b]]) + s[b + 1:]
        out.append(s[0].upper() + s[1:])
    return out


# ---------------------------------------------------------------- sources
def asterisk_transcripts(path: Path = ASTERISK_TEXT) -> dict[str, str]:
    """name -> text for spoken prompts (bracketed non-speech descriptions dropped)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: install the Debian package asterisk-core-sounds-en")
    out = {}
    for line in gzip.open(path, "rt", encoding="utf-8", errors="replace"):
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, _, text = line.partition(":")
        text = " ".join(text.split())
        if not text or text.startswith("[") or not any(c.isalpha() for c in text):
            continue
        out[name.strip()] = text
    return out


def decode_asterisk(names: list[str], out_dir: Path, rate: int, chunk: int = 64) -> dict[str, Path]:
    """G.722 prompts -> 16-bit wavs at `rate`, many files per ffmpeg call. Returns name -> wav path."""
    if shutil.which("ffmpeg") is None:
        raise FileNotFoundError("ffmpeg not found on PATH (needed to decode the G.722 prompts)")
    out = {}
    for s in range(0, len(names), chunk):
        part = [n for n in names[s:s + chunk] if (ASTERISK_DIR / f"{n}.g722").exists()]
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
        for n in part:
            cmd += ["-f", "g722", "-i", str(ASTERISK_DIR / f"{n}.g722")]
        for i, n in enumerate(part):
            dst = out_dir / f"asterisk_{n.replace('/', '_')}.wav"
            cmd += ["-map", f"{i}:a", "-ac", "1", "-ar", str(rate), "-c:a", "pcm_s16le", str(dst)]
            out[n] = dst
        if part:
            subprocess.run(cmd, check=True)
    return out


def synthesize(text: str, voice: str, dst: Path, rate: int, speed: int, pitch: int) -> None:
    """espeak-ng -> wav at `rate`."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", tmp.name, text],
                       check=True, capture_output=True)
        wav, sr = audio.read(tmp.name)
    audio.save(dst, audio.resample(wav, sr, rate), rate)


def build_raw(cfg: DemoConfig, progress: bool = True) -> Path:
    """raw/ wavs + manifest.jsonl (skipped when the manifest exists)."""
    from tqdm import tqdm

    raw = Path(cfg.out_dir) / "raw"
    manifest = raw / "manifest.jsonl"
    if manifest.exists():
        return manifest
    raw.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    rows = []
    texts = asterisk_transcripts()
    names = sorted(texts)
    if cfg.n_prompts is not None:
        names = sorted(rng.sample(names, min(cfg.n_prompts, len(names))))
    wavs = decode_asterisk(names, raw, cfg.sample_rate)
    for n, p in wavs.items():
        rows.append({"path": p.name, "id": p.stem, "text": texts[n], "speaker": "asterisk-prompts",
                     "language": "en", "origin": "asterisk", "prompt": n})
    for r in rows:
        r["split"] = "train"
    roles = [("train", cfg.pretrain_voices, cfg.n_synth), ("task", cfg.task_voices, cfg.n_task),
             ("val", cfg.val_voices, cfg.n_val)]
    shared = set(cfg.pretrain_voices) & set(cfg.task_voices) | set(cfg.val_voices) & (set(cfg.pretrain_voices) | set(cfg.task_voices))
    if shared:
        raise ValueError(f"demo voices must be speaker-disjoint across pretrain/task/val, shared: {sorted(shared)}")
    n_all = sum(n for _, voices, n in roles if voices)
    if n_all:
        if shutil.which("espeak-ng") is None:
            raise FileNotFoundError("espeak-ng not found on PATH (needed for the synthetic speakers)")
        from concurrent.futures import ThreadPoolExecutor

        texts_all = iter(sentences(n_all, cfg.seed))  # one stream: every utterance says its own sentence
        jobs, i = [], 0
        for split, voices, n in roles:
            for j in range(n if voices else 0):
                voice = voices[j % len(voices)]
                jobs.append((next(texts_all), voice, raw / f"espeak_{i:05d}.wav", rng.randint(145, 185),
                             rng.randint(35, 65), split))
                i += 1
        with ThreadPoolExecutor(cfg.workers) as ex:  # espeak-ng runs in subprocesses: threads suffice
            futures = [ex.submit(synthesize, text, voice, dst, cfg.sample_rate, speed, pitch)
                       for text, voice, dst, speed, pitch, _ in jobs]
            for f in tqdm(futures, desc="espeak-ng", unit="utt", disable=not progress):
                f.result()
        for text, voice, dst, speed, pitch, split in jobs:
            rows.append({"path": dst.name, "id": dst.stem, "text": text, "speaker": f"espeak-{voice}",
                         "language": "en", "origin": "espeak-ng", "voice": voice, "speed": speed, "pitch": pitch,
                         "split": split})
    write_text(manifest, "".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def iter_wavs(shards, rate: int) -> Iterator[torch.Tensor]:
    """Decoded waveforms of every sample, streamed (nothing accumulates)."""
    for url in expand_shards(shards):
        for s in iter_tar(url):
            if s["__key__"] == TOKENIZER_MEMBER or audio_ext(s) is None:
                continue
            try:
                wav, sr = audio.read(s[audio_ext(s)])
            except audio.AudioError:
                continue
            yield audio.resample(torch.from_numpy(wav), sr, rate)


def build_demo(cfg: DemoConfig | None = None, progress: bool = True, log=print) -> dict:
    """Build (or find complete) the demo corpus; returns the summary written to demo.json."""
    from metis.data.prepare import prepare
    from metis.data.tokenize import tokenize
    from metis.data.validate import SampleRules
    from metis.tokenizers.kmeans import KMeansConfig, KMeansTokenizer

    cfg = cfg or DemoConfig()
    root = Path(cfg.out_dir)
    done = root / "demo.json"
    if done.exists():
        summary = json.loads(done.read_text())
        stored = {k: v for k, v in summary.get("config", {}).items() if k not in ("out_dir", "workers")}
        if stored == _jsonable(cfg):
            summary["already_done"] = True
            return summary
        raise RuntimeError(f"{done} was built with another configuration {summary.get('config')}; "
                           f"remove {root} (or choose another out_dir) to rebuild")
    t0 = time.time()
    manifest = build_raw(cfg, progress)
    sources = discover_manifest(manifest, "en")
    splits = {}
    for split in SPLITS:
        subset = [s for s in sources if s.extra.get("split") == split]
        if not subset:
            continue
        d = root / "shards" / split
        if (d / "prepare.json").exists():
            splits[split] = json.loads((d / "prepare.json").read_text())
        else:
            count = cfg.task_shard_samples if split == "task" else cfg.shard_samples
            splits[split] = write_shards(subset, d, sample_rate=cfg.sample_rate, min_dur=cfg.min_dur,
                                         max_dur=cfg.max_dur, max_count=count, seed=cfg.seed,
                                         prefix=split, progress=progress, desc=f"shards/{split}")
    tok_dir = root / "tokenizer"
    if (tok_dir / "kmeans.json").exists():
        tok = KMeansTokenizer.load(tok_dir)
    else:
        log(f"fitting k-means ({cfg.n_clusters} clusters) on shards/train ...")
        wavs = iter_wavs(str(root / "shards" / "train"), 16000)
        tok = KMeansTokenizer.fit(wavs, KMeansConfig(n_clusters=cfg.n_clusters, max_fit_frames=cfg.max_fit_frames,
                                                     seed=cfg.seed), log=log)
        tok.save(tok_dir)
    tokens = {}
    rules = SampleRules(min_dur=cfg.min_dur, max_dur=cfg.max_dur)  # the limits the shards were written with
    for split in splits:
        tokens[split] = tokenize(str(root / "shards" / split), root / "tokens" / split, tok, rules=rules,
                                 progress=progress)
    speakers = {split: sorted({s.speaker for s in sources if s.extra.get("split") == split}) for split in splits}
    summary = {
        "out_dir": str(root),
        "hours": round(sum(splits[s]["hours"] for s in splits), 4),
        "samples": {s: splits[s]["samples"] for s in splits},
        "speakers": len({s.speaker for s in sources}),
        "split_speakers": speakers,
        "shards": {s: splits[s]["shards"] for s in splits},
        "train_shards": str(root / "tokens" / "train"),
        "task_shards": str(root / "tokens" / "task") if "task" in splits else None,
        "val_shards": str(root / "tokens" / "val"),
        "tokenizer": f"kmeans:{tok_dir}",
        "tokenizer_identity": tok.identity(),
        "skipped": {s: splits[s]["skipped"] for s in splits},
        "build_s": round(time.time() - t0, 1),
        "config": _jsonable(cfg),
    }
    write_json(done, summary)
    return summary


def _jsonable(cfg: DemoConfig) -> dict:
    """The settings that determine the corpus (`workers` only changes speed; `out_dir` may be
    spelled relative or absolute)."""
    d = json.loads(json.dumps(asdict(cfg)))
    d.pop("workers")
    d.pop("out_dir")
    return d
