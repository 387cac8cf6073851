"""The demo corpus builder on a small subset (10 Asterisk prompts + 5 espeak-ng sentences)."""

import glob
import io
import json
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import soundfile as sf

from metis.data import demo
from metis.data.loader import build_loader
from metis.data.shards import iter_tar, load_npy
from metis.tokenizers.kmeans import KMeansTokenizer

pytestmark = pytest.mark.skipif(
    not (demo.ASTERISK_TEXT.exists() and demo.ASTERISK_DIR.exists() and shutil.which("ffmpeg")
         and shutil.which("espeak-ng")),
    reason="needs asterisk-core-sounds-en(-g722), ffmpeg and espeak-ng (Debian packages)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = demo.DemoConfig(out_dir=str(out), n_prompts=10, n_synth=5, n_task=3, n_val=2, n_clusters=16, seed=3)
    return cfg, demo.build_demo(cfg, progress=False, log=lambda *_: None)


def samples(pattern):
    return [s for p in sorted(glob.glob(pattern)) for s in iter_tar(p) if s["__key__"] != "__tokenizer__"]


def test_summary_and_idempotence(built):
    cfg, summary = built
    assert summary["samples"] == {"train": 15, "task": 3, "val": 2}
    assert summary["speakers"] == 11  # the Asterisk voice + 5 pre-training, 3 task and 2 val espeak-ng voices
    split = {k: set(v) for k, v in summary["split_speakers"].items()}
    assert not (split["train"] & split["task"] or split["val"] & (split["train"] | split["task"]))  # speaker-disjoint
    assert "asterisk-prompts" in split["train"]
    assert summary["hours"] > 0 and summary["shards"]["train"] >= 1
    again = demo.build_demo(cfg, progress=False)
    assert again["already_done"] and again["tokenizer_identity"] == summary["tokenizer_identity"]


def test_audio_is_playable_and_transcripts_match(built):
    cfg, _ = built
    texts = demo.asterisk_transcripts()
    got = samples(f"{cfg.out_dir}/tokens/*/*.tar")
    assert len(got) == 20
    assert len({json.loads(s["json"])["text"] for s in got if "voice" in json.loads(s["json"])}) == 10  # own sentences
    origins = set()
    for s in got:
        m = json.loads(s["json"])
        wav, sr = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        assert sr == 16000 and wav.ndim == 1
        assert abs(len(wav) / sr - m["duration"]) < 1e-3
        assert np.sqrt(np.mean(wav ** 2)) > 0.01  # not silent
        origins.add(m["origin"])
        if m["origin"] == "asterisk":
            assert m["text"] == texts[m["prompt"]]
            ref = subprocess.run(["ffmpeg", "-v", "error", "-f", "g722", "-i", str(demo.ASTERISK_DIR / f"{m['prompt']}.g722"),
                                  "-f", "s16le", "-ac", "1", "-ar", "16000", "-"], capture_output=True, check=True).stdout
            ref = np.frombuffer(ref, np.int16).astype(np.float32) / 32768
            assert len(ref) == len(wav) and np.abs(ref - wav).max() < 1e-3  # the named prompt's audio
        else:
            assert m["speaker"] == f"espeak-{m['voice']}"
            with tempfile.TemporaryDirectory() as d:  # re-speak the claimed text: the same audio
                demo.synthesize(m["text"], m["voice"], f"{d}/x.wav", 16000, m["speed"], m["pitch"])
                ref, _ = sf.read(f"{d}/x.wav", dtype="float32")
            assert len(ref) == len(wav) and np.abs(ref - wav).max() < 1e-3
    assert origins == {"asterisk", "espeak-ng"}


def test_tokens_at_50_hz_and_loader(built):
    cfg, summary = built
    tok = KMeansTokenizer.load(f"{cfg.out_dir}/tokenizer")
    assert tok.identity() == summary["tokenizer_identity"] and tok.codebook_size == 16
    for s in samples(f"{cfg.out_dir}/tokens/train/*.tar"):
        wav, _ = sf.read(io.BytesIO(s["flac"]), dtype="float32")
        sem = load_npy(s["sem.npy"])
        assert sem.shape == (KMeansTokenizer.n_frames(len(wav)),) and sem.max() < 16
    loader = build_loader(summary["train_shards"], mode="val", max_tokens=3000, num_workers=0, min_dur=0.3,
                          tokenizer_identity=summary["tokenizer_identity"], max_dur=20)
    assert sum(len(b["id"]) for b in loader) == summary["samples"]["train"] and loader.skips.total == 0
