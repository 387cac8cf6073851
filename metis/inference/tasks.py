"""Task requests, their published default settings, and the chunking rule for long inputs.

Published stage-1 defaults live in the task registry (`metis.tasks`, one `decode` per task; docs/reference.md §6, §10.7);
then S2A 1-layer: [40] steps, cfg 0, temperature 1.5; S2A full: [40, 16, 1 x 10] (layer 0 given),
cfg 2.5, rescale 0.75, temperature 1.5. Every value can be overridden per pipeline or per request.

Chunking (the source of the registry's `chunked` tasks: se, tse, vc): a source of F frames (F = n16 // 320) longer than
C = chunk_seconds x 50 frames is cut, on 20 ms frame boundaries (320 samples at 16 kHz), into the
fewest windows of C frames whose consecutive overlaps are at least O = overlap_seconds x 50 frames:
n = ceil((F - C) / (C - O)) + 1 windows, starting at round(k (F - C) / (n - 1)), k = 0..n-1, so
the first starts at 0, the last ends at the end of the input (it also keeps the tail samples), and
the overlaps are spread evenly. Each window runs
through the whole pipeline on its own (windows of one or several files share batches), and window k's
output is placed at its start frame; consecutive outputs are cross-faded linearly over the frames they
share. The output length is the last window's start plus that window's output, which for se equals
the one-pass length semantic_num_frames(n16) x 480 exactly (window starts are whole 320-sample
steps, so T_s(offset + n) = offset / 320 + T_s(n)).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from metis import tasks as registry
from metis.models.decoding import DecodeConfig

TASKS = registry.names(inference=True)  # tasks a request can name
CHUNKED_TASKS = registry.names(inference=True, chunked=True)
FRAME_RATE = 50
SAMPLES_PER_FRAME_16K = 320
SAMPLES_PER_FRAME_24K = 480

STAGE1_DEFAULTS: dict[str, DecodeConfig] = {t: DecodeConfig(**registry.get(t).decode) for t in TASKS}


@dataclass(frozen=True)
class S2ASettings:
    """Decoding settings of one S2A model: steps per layer, one cfg / temperature for all layers."""

    n_timesteps: tuple[int, ...]
    cfg: float
    rescale_cfg: float = 0.75
    temp: float = 1.5
    filter_thres: float = 0.98

    def layers(self, num_quantizer: int) -> list[DecodeConfig]:
        if len(self.n_timesteps) < num_quantizer:
            raise ValueError(f"S2A n_timesteps {list(self.n_timesteps)} has fewer entries than the model's {num_quantizer} layers")
        return [DecodeConfig(int(s), self.temp, self.filter_thres, self.cfg, self.rescale_cfg) for s in self.n_timesteps[:num_quantizer]]


S2A_1LAYER_DEFAULT = S2ASettings(n_timesteps=(40,), cfg=0.0)
S2A_FULL_DEFAULT = S2ASettings(n_timesteps=(40, 16) + (1,) * 10, cfg=2.5)

STAGE1_KEYS = registry.DECODE_KEYS
S2A_KEYS = ("n_timesteps", "temp", "filter_thres", "cfg", "rescale_cfg")


def apply_overrides(base_stage1: DecodeConfig, s2a_1: S2ASettings, s2a_full: S2ASettings, overrides: dict | None,
                    where: str = "overrides") -> tuple[DecodeConfig, S2ASettings, S2ASettings]:
    """Stage-1 keys at the top level, S2A keys under "s2a_1layer" / "s2a_full"; unknown keys are errors."""
    overrides = dict(overrides or {})
    s2a_parts = {name: overrides.pop(name, None) or {} for name in ("s2a_1layer", "s2a_full")}
    bad = sorted(set(overrides) - set(STAGE1_KEYS))
    if bad:
        raise KeyError(f"{where}: unknown setting(s) {bad}; stage-1 settings are {list(STAGE1_KEYS)}, "
                       "S2A settings go under 's2a_1layer' / 's2a_full'")
    stage1 = replace(base_stage1, **overrides)
    out = []
    for name, base in (("s2a_1layer", s2a_1), ("s2a_full", s2a_full)):
        part = dict(s2a_parts[name])
        bad = sorted(set(part) - set(S2A_KEYS))
        if bad:
            raise KeyError(f"{where}.{name}: unknown setting(s) {bad}; known: {list(S2A_KEYS)}")
        if "n_timesteps" in part:
            part["n_timesteps"] = tuple(int(s) for s in part["n_timesteps"])
        out.append(replace(base, **part))
    return stage1, out[0], out[1]


@dataclass
class Request:
    """One inference job.

    Attributes:
        task: an inference task of the registry (`metis.tasks`: tts, se, tse, vc, l2s, ...).
        output: where the 24 kHz wav goes.
        input: the source speech file of an audio task (se: noisy, tse: mixture, vc: source, ...).
        prompt: the reference / enrolment speech file (tts, tse, vc, l2s).
        text, prompt_text, language: tts target text, the prompt's transcript, G2P language.
        target_seconds: tts output duration; None uses the byte-ratio rule.
        video_features: l2s visual features (.npy or .pt, (T_v, 768) at 25 Hz).
        seed: seeds this request's own noise generators (results do not depend on its batch mates).
        overrides: decoding settings for this request (see `apply_overrides`).
        id: a name for the results file.
    """

    task: str
    output: str | None = None
    input: str | None = None
    prompt: str | None = None
    text: str | None = None
    prompt_text: str | None = None
    language: str = "en"
    target_seconds: float | None = None
    video_features: str | None = None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: expected one of {TASKS}")
        need = registry.get(self.task).request_fields
        missing = [k for k in need if getattr(self, k) in (None, "")]
        if missing:
            raise ValueError(f"task {self.task} needs {', '.join(missing)} (got none)")
        if self.task == "tts" and self.target_seconds is not None and float(self.target_seconds) <= 0:
            raise ValueError(f"target_seconds must be positive, got {self.target_seconds}")


def tts_target_len(prompt_frames: int, text: str, prompt_text: str | None, target_seconds: float | None) -> int:
    """TTS target frames: seconds x 50 if given, else prompt_frames x bytes(text) // bytes(prompt_text)."""
    if target_seconds is not None:
        return max(1, int(float(target_seconds) * FRAME_RATE))
    if not prompt_text:
        raise ValueError("tts needs prompt_text (the transcript of the prompt) or target_seconds")
    n = prompt_frames * len(text.encode("utf-8")) // len(prompt_text.encode("utf-8"))
    if n < 1:
        raise ValueError(f"tts target length is {n} frames (prompt {prompt_frames} frames, texts of "
                         f"{len(text.encode())} / {len(prompt_text.encode())} bytes): give target_seconds")
    return n


def chunk_starts(n_frames: int, chunk_frames: int, overlap_frames: int) -> list[int]:
    """Start frames of the windows covering n_frames (see the module docstring); [0] if it fits."""
    if chunk_frames <= 0 or n_frames <= chunk_frames:
        return [0]
    if not 0 <= overlap_frames < chunk_frames:
        raise ValueError(f"overlap ({overlap_frames} frames) must be in [0, chunk {chunk_frames} frames)")
    span = n_frames - chunk_frames
    n = -(-span // (chunk_frames - overlap_frames)) + 1  # fewest windows whose overlaps are >= overlap_frames
    return [(k * span + (n - 1) // 2) // (n - 1) for k in range(n)]


def stitch(pieces: list[torch.Tensor], starts: list[int], samples_per_frame: int = SAMPLES_PER_FRAME_24K) -> torch.Tensor:
    """Place piece k (a waveform) at starts[k] frames and cross-fade linearly where pieces overlap."""
    out = pieces[0]
    for piece, start in zip(pieces[1:], starts[1:]):
        offset = start * samples_per_frame
        if offset >= out.numel():  # a gap (no overlap): silence in between
            out = torch.cat([out, out.new_zeros(offset - out.numel()), piece])
            continue
        ov = min(out.numel() - offset, piece.numel())
        fade = torch.linspace(0, 1, ov + 2, dtype=out.dtype, device=out.device)[1:-1]
        mixed = out[offset:offset + ov] * (1 - fade) + piece[:ov] * fade
        out = torch.cat([out[:offset], mixed, piece[ov:]])
    return out
