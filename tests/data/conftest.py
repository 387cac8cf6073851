"""Generated-audio shards for the data tests."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import soundfile as sf

from metis.data.shards import ShardWriter, npy_bytes

FAKE_ID = {"name": "fake", "model": "test", "codec_sha256": "0" * 64}


def tone(dur: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A few harmonics with a slow pitch glide plus a little noise: non-silent, speech-band audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(dur * sr))) / sr
    f0 = 120 + 80 * rng.random() + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5))
    return (0.2 * wav + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def flac(wav: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def meta(key: str, dur: float, speaker: str = "spk0", **kw) -> bytes:
    return json.dumps({"id": key, "text": f"text of {key}", "duration": dur, "speaker": speaker,
                       "language": "en", **kw}).encode()


def sample(key: str, dur: float, *, sr: int = 16000, speaker: str = "spk0", sem: bool = True,
           audio: bool = True, seed: int = 0) -> dict[str, bytes]:
    m = {"json": meta(key, dur, speaker)}
    if audio:
        m["flac"] = flac(tone(dur, sr, seed), sr)
    if sem:
        n = int(round(dur * 50))
        m["sem.npy"] = npy_bytes((np.arange(n) * 7 % 512).astype(np.int16))
    return m


def write_corpus(root, n_shards: int, per_shard: int, *, durs=None, sem=True, audio=True,
                 identity=FAKE_ID, prefix="s", seed=0) -> list[str]:
    """n_shards × per_shard samples keyed f"{prefix}{shard}_{i}" with durations from `durs(rng)`."""
    rng = random.Random(seed)
    durs = durs or (lambda r: round(r.uniform(1.0, 6.0), 2))
    paths = []
    for s in range(n_shards):
        path = root / f"{prefix}-{s:04d}.tar"
        with ShardWriter(path, tokenizers={"sem": identity} if sem and identity else None) as w:
            for i in range(per_shard):
                key = f"{prefix}{s}_{i}"
                w.write(key, sample(key, durs(rng), speaker=f"spk{i % 3}", sem=sem, audio=audio, seed=s * 1000 + i))
        paths.append(str(path))
    return paths


@pytest.fixture
def corpus(tmp_path):
    """4 shards × 10 token+audio samples."""
    return write_corpus(tmp_path, 4, 10)
