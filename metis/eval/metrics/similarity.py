"""Speaker similarity (SIM): cosine similarity of speaker embeddings of the generated audio and the prompt.

- ``WavLMSim``: WavLM speaker verification from a user-supplied path: either the UniSpeech WavLM-large +
  ECAPA-TDNN checkpoint file (``wavlm_large_finetune.pth``, the papers' SIM-O; see ``wavlm_tdnn``) or a
  Hugging Face ``WavLMForXVector`` folder (e.g. a local WavLM-base-plus-sv copy; another scale).
- ``ResemblyzerSim``: the offline fallback with the GE2E weights shipped in ``resemblyzer``. Its scale differs
  from WavLM-TDNN (same-speaker scores run high, around 0.8-0.9), so reports name it ``sim_resemblyzer``.
  GE2E alone scores noise like another speaker (docs/eval.md), so the fallback embeds only the speech that the
  Silero VAD (weights shipped in ``silero-vad``) finds; a clip with less than ``min_speech_s`` of speech has no
  speaker to compare, its embedding is the zero vector and its SIM 0.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from metis.audio import Audio, resample
from metis.eval.metrics.base import Metric, MetricUnavailable, require


def _key(samples: np.ndarray, sr: int) -> str:
    return f"{sr}:{hashlib.sha1(np.ascontiguousarray(samples).tobytes()).hexdigest()}"


class _EmbeddingSim(Metric):
    needs = ("prompt",)
    key: str

    def __init__(self):
        self._cache: dict[str, np.ndarray] = {}

    def _embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        raise NotImplementedError

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """L2-normalised speaker embedding, memoised (prompts repeat across a test set)."""
        k = _key(wav, sr)
        if k not in self._cache:
            e = np.asarray(self._embed(np.asarray(wav, dtype=np.float32), int(sr)), dtype=np.float64).reshape(-1)
            self._cache[k] = e / max(np.linalg.norm(e), 1e-12)  # (a zero vector stays zero)
            if len(self._cache) > 4096:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[k]

    def similarity(self, a: Audio, b: Audio) -> float:
        return float(np.dot(self.embed(*a), self.embed(*b)))

    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        return {self.key: self.similarity(Audio(wav, sr), Audio(*prompt))}


class WavLMSim(_EmbeddingSim):
    name = "sim_wavlm"
    key = "sim_wavlm"

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu"):
        super().__init__()
        self.model_dir = model_dir
        self.device = device
        self.description = f"SIM: WavLM x-vector speaker verification ({model_dir})"
        self._model = None

    def check(self) -> None:
        if not self.model_dir:
            raise MetricUnavailable("WavLM SIM needs a local model: pass --wavlm-model PATH (UniSpeech "
                                    "wavlm_large_finetune.safetensors, made once from the .pth with `python -m "
                                    "metis.checkpoints.convert wavlm_large_finetune.pth DIR --trust-pickle`, or a "
                                    "WavLMForXVector folder)")
        p = Path(self.model_dir).expanduser()
        if p.is_file():
            self.description = f"SIM: UniSpeech WavLM + ECAPA-TDNN ({p.name}), the papers' SIM-O model"
            return
        if not p.exists():
            raise MetricUnavailable(f"--wavlm-model {p} does not exist")
        if not (p / "config.json").is_file():
            raise MetricUnavailable(f"--wavlm-model {p} has no config.json (expected a WavLMForXVector folder "
                                    "or a UniSpeech .safetensors/.pth file)")

    def _load(self):
        if self._model is None:
            self.check()
            p = Path(self.model_dir).expanduser()
            if p.is_file():
                from metis.eval.metrics.wavlm_tdnn import WavLMTDNN

                try:
                    self._model = ("tdnn", WavLMTDNN.from_unispeech(p).to(self.device), False)
                except (ValueError, KeyError) as e:
                    raise MetricUnavailable(str(e)) from e
                return self._model
            from transformers import WavLMForXVector

            model = WavLMForXVector.from_pretrained(str(p))
            norm = True
            if (p / "preprocessor_config.json").is_file():
                import json

                norm = bool(json.loads((p / "preprocessor_config.json").read_text()).get("do_normalize", True))
            self._model = ("xvector", model.eval().to(self.device), norm)
        return self._model

    @torch.inference_mode()
    def _embed(self, wav, sr):
        kind, model, normalize = self._load()
        x = resample(wav, sr, 16000)
        if kind == "tdnn":  # normalises the waveform itself
            return model(torch.from_numpy(x)[None].to(self.device))[0].float().cpu().numpy()
        if normalize:  # zero mean, unit variance, as Wav2Vec2FeatureExtractor(do_normalize=True)
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        out = model(torch.from_numpy(x)[None].to(self.device))
        return out.embeddings[0].float().cpu().numpy()


class ResemblyzerSim(_EmbeddingSim):
    name = "sim_resemblyzer"
    key = "sim_resemblyzer"
    description = "SIM: resemblyzer GE2E (offline fallback, NOT the papers' WavLM-TDNN)"

    def __init__(self, device: str = "cpu", min_speech_s: float = 0.3):
        super().__init__()
        self.device = device
        self.min_speech_s = float(min_speech_s)
        self._encoder = None
        self._vad = None

    def check(self) -> None:
        require("resemblyzer", "resemblyzer (needs librosa, webrtcvad-wheels)")
        require("webrtcvad", "webrtcvad-wheels")
        require("silero_vad", "silero-vad")

    def _load(self):
        if self._encoder is None:
            from resemblyzer import VoiceEncoder
            from silero_vad import load_silero_vad

            self._encoder = VoiceEncoder(self.device, verbose=False)
            self._vad = load_silero_vad(onnx=True)
        return self._encoder

    def speech(self, x: np.ndarray) -> np.ndarray:
        """The speech segments of a 16 kHz clip, concatenated (Silero VAD)."""
        from silero_vad import get_speech_timestamps

        self._load()
        spans = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), self._vad,
                                      sampling_rate=16000)
        return np.concatenate([x[s["start"]:s["end"]] for s in spans]) if spans else x[:0]

    @torch.inference_mode()
    def _embed(self, wav, sr):
        from resemblyzer import preprocess_wav
        from resemblyzer.hparams import model_embedding_size

        x = self.speech(resample(wav, sr, 16000))
        if len(x) < self.min_speech_s * 16000:  # no speech, no speaker: cosine 0 with anything
            return np.zeros(model_embedding_size)
        y = preprocess_wav(x, source_sr=16000)  # volume normalisation and resemblyzer's own silence trimming
        return self._load().embed_utterance(y if len(y) else x)
