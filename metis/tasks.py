"""The task registry: one `TaskSpec` per fine-tuning / inference task, the only list of tasks.

Everything that needs to know about tasks reads it: the fine-tune module (which model a task needs),
the task configs (`configs/task/<name>.yaml` must agree with the spec; tests/test_tasks.py checks it),
the inference requests and pipeline (request fields, chunking, published decode defaults, which
checkpoint to load), the published checkpoint table (released LoRA ranks) and the evaluation
(metric set, whether the input is scored too). Adding a task = one entry here, its condition
simulator in `metis.conditions`, one `configs/task/<name>.yaml` (docs/extending.md).

This module imports nothing from metis, so every layer (models excepted: they take plain
constructor arguments) may import it without cycles.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping

#: stage-1 decoding keys (metis.inference.sampling.DecodeConfig)
DECODE_KEYS = ("n_timesteps", "temp", "filter_thres", "cfg", "rescale_cfg")


def decode(n_timesteps: int, cfg: float, rescale_cfg: float = 0.75, temp: float = 0.9,
           filter_thres: float = 0.98) -> Mapping[str, float]:
    """Published stage-1 decode settings: temperature 0.9 and top-k threshold 0.98 for every task."""
    return MappingProxyType({"n_timesteps": int(n_timesteps), "temp": float(temp), "filter_thres": float(filter_thres),
                             "cfg": float(cfg), "rescale_cfg": float(rescale_cfg)})


@dataclass(frozen=True)
class TaskSpec:
    """What one task is, end to end.

    Attributes:
        name: the task's name (`task=<name>`, `Request.task`, `--task`).
        summary: one line for listings (CLI help, the web app).
        ft_type: `MetisStage1(ft_type=...)`: None/"tts" build no adapter, any other name builds the
            frame-aligned condition adapter.
        phones: the model has the phone prefix (`use_phone_cond`).
        zero_gate_adapter: `use_zero_gate_adapter` (None: the model's default, zero gate but l2s).
        cond_dim: adapter input size; None: the feature extractor's size (`feature_dim`).
        features: the condition is computed from audio by the feature extractor (`features=...`).
        fields: what the loader batches must carry (`data.fields`).
        conditioner: the condition builder class (`metis.conditions.builders`), the `_target_` of
            `configs/task/<name>.yaml`'s conditioner.
        input: what an inference request conditions on: "text" (tts), "video" (l2s), "audio" (a
            source waveform), or None (not an inference task: omni serves the others).
        prompt: the request takes a speaker prompt; for "audio" tasks the prompt's frames lead the
            sequence and are kept for S2A.
        request_fields: `Request` attributes a request must set.
        chunked: long audio sources are windowed (`metis.inference.tasks.chunk_starts`).
        decode: published stage-1 decode settings (None: not decoded on its own).
        checkpoint: (default repo role "metis"/"maskgct", kind of the whole-model file in
            `metis.checkpoints.published.KINDS`), or None when nothing is published (load your own).
        lora_r: rank of the published LoRA split (`metis_{task}_lora_{r}`), or None.
        metrics: the paper's metric set (`python -m metis.eval --task`).
        score_input: the evaluation also scores the request's input (before/after comparison).
        serves: for a multi-task model (omni): the tasks its checkpoint serves at inference.
    """

    name: str
    summary: str
    ft_type: str | None
    phones: bool = False
    zero_gate_adapter: bool | None = None
    cond_dim: int | None = None
    features: bool = True
    fields: tuple[str, ...] = ("sem", "wav16")
    conditioner: str = ""
    input: Literal["text", "video", "audio"] | None = "audio"
    prompt: bool = False
    request_fields: tuple[str, ...] = ("input",)
    chunked: bool = False
    decode: Mapping[str, float] | None = None
    checkpoint: tuple[str, str] | None = None
    lora_r: int | None = None
    metrics: tuple[str, ...] = ()
    score_input: bool = False
    serves: tuple[str, ...] = ()

    @property
    def adapter(self) -> bool:
        """The model carries the condition adapter (every ft_type but None / tts)."""
        return self.ft_type not in (None, "tts")

    def model_kwargs(self, feature_dim: int | None = None) -> dict:
        """The `MetisStage1` constructor arguments this task sets."""
        kw = {"ft_type": self.ft_type, "use_phone_cond": self.phones}
        if self.adapter:
            dim = self.cond_dim if self.cond_dim is not None else feature_dim
            if dim is not None:
                kw["cond_dim"] = int(dim)
            if self.zero_gate_adapter is not None:
                kw["use_zero_gate_adapter"] = self.zero_gate_adapter
        return kw


_B = "metis.conditions.builders."
_SPECS = (
    TaskSpec("tts", "text-to-speech: phones of the text + a speaker prompt", ft_type="tts", phones=True, features=False,
             fields=("sem",), conditioner=_B + "TTSConditions", input="text", prompt=True,
             request_fields=("prompt", "text", "prompt_text"), decode=decode(25, cfg=2.5),
             checkpoint=("maskgct", "metis_tts"), metrics=("wer", "sim", "dnsmos")),
    TaskSpec("se", "speech enhancement: noisy / reverberant / clipped speech in, clean speech out", ft_type="se",
             conditioner=_B + "SEConditions", chunked=True, decode=decode(10, cfg=0.0),
             checkpoint=("metis", "metis_se_full"), lora_r=32,
             metrics=("dnsmos", "nisqa", "distillmos", "pesq", "stoi", "sisdr"), score_input=True),
    TaskSpec("tse", "target speaker extraction: a mixture + the target's enrolment speech", ft_type="tse",
             conditioner=_B + "TSEConditions", prompt=True, request_fields=("input", "prompt"), chunked=True,
             decode=decode(10, cfg=0.0), checkpoint=("metis", "metis_tse_full"), lora_r=32,
             metrics=("dnsmos", "nisqa", "sim", "wer", "pesq", "stoi", "sisdr"), score_input=True),
    TaskSpec("vc", "voice conversion: source speech + a target-speaker prompt", ft_type="vc",
             conditioner=_B + "VCConditions", prompt=True, request_fields=("input", "prompt"), chunked=True,
             decode=decode(20, cfg=1.0), checkpoint=("metis", "metis_vc_full"), lora_r=16,
             metrics=("wer", "sim", "dnsmos")),
    TaskSpec("l2s", "lip-to-speech: 25 fps visual features + a speaker prompt", ft_type="l2s", zero_gate_adapter=False,
             cond_dim=768, features=False, fields=("sem", "vis"), conditioner=_B + "L2SConditions", input="video",
             prompt=True, request_fields=("video_features", "prompt"), decode=decode(25, cfg=0.0),
             checkpoint=("metis", "metis_l2s"), metrics=("wer", "sim", "dnsmos")),
    TaskSpec("plc", "packet-loss concealment: speech with lost VoIP packets in, complete speech out", ft_type="plc",
             conditioner=_B + "SEConditions", chunked=True, decode=decode(10, cfg=0.0),  # nothing published: se's settings
             metrics=("plcmos", "dnsmos", "pesq", "stoi", "sisdr"), score_input=True),
    TaskSpec("omni", "one model for tts / se / tse / vc (phones and adapter); serves those tasks at inference",
             ft_type="omni", phones=True, conditioner=_B + "OmniConditions", input=None, request_fields=(),
             checkpoint=("metis", "metis_omni"), serves=("tts", "se", "tse", "vc")),
)

#: name -> spec, in a stable order
TASKS: Mapping[str, TaskSpec] = MappingProxyType({s.name: s for s in _SPECS})


def get(name: str) -> TaskSpec:
    """The spec of task `name`; a KeyError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}") from None


def names(*, inference: bool | None = None, chunked: bool | None = None, lora: bool | None = None) -> tuple[str, ...]:
    """Task names, optionally only those that are (or are not) inference tasks / chunked / LoRA-published."""
    out = []
    for s in TASKS.values():
        if inference is not None and (s.input is not None) != inference:
            continue
        if chunked is not None and s.chunked != chunked:
            continue
        if lora is not None and (s.lora_r is not None) != lora:
            continue
        out.append(s.name)
    return tuple(out)


DECODE_CONFIG = "metis_stage1_decode"  # infer.yaml's defaults list merges it at pipeline.stage1_settings


def store_decode_config() -> None:
    """Put the published decode settings into Hydra's ConfigStore as `metis_stage1_decode`, so that
    `configs/infer/infer.yaml` shows them (`--cfg job`) and `pipeline.stage1_settings.se.n_timesteps=3`
    overrides them, without a copy of the numbers in YAML. Call it before composing infer.yaml."""
    from hydra.core.config_store import ConfigStore

    node = {name: dict(TASKS[name].decode) for name in names(inference=True)}
    ConfigStore.instance().store(name=DECODE_CONFIG, node=node, package="pipeline.stage1_settings")


__all__ = ["DECODE_CONFIG", "DECODE_KEYS", "TASKS", "TaskSpec", "decode", "get", "names", "store_decode_config"]
