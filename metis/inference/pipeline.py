"""The inference pipeline: audio in -> SSL / acoustic tokens -> stage 1 -> S2A -> codec -> 24 kHz wav.

docs/reference.md §6. One `Pipeline` holds the models (stage-1 model per task, the two S2A models, the
semantic and acoustic tokenizers, G2P); every component is injectable, so tests run tiny random
models through the same code.

    pipe = Pipeline(stage1={"se": se_model, "vc": vc_model}, s2a_1layer=s1, s2a_full=sf,
                    semantic=SemanticTokenizer(...), acoustic=AcousticTokenizer(...))
    wav = pipe(Request(task="se", input="noisy.wav"))               # (n,) at 24 kHz
    results = pipe.run([Request(...), ...])                          # batched, writes request.output

Per item (a request, or one window of a long se / tse / vc input) the one generation chain
`metis.inference.generate.generate` runs stage 1 -> S2A 1-layer -> S2A full -> codec. Batches are
sorted by length; every row is decoded as if alone and draws from its own generator seeded from its
request's seed, so a result does not depend on the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from metis import audio
from metis import tasks as registry
from metis.audio import OUTPUT_SAMPLE_RATE
from metis.conditions.visual import load_video_features, upsample_visual
from metis.inference.generate import Item, generate
from metis.inference.tasks import (S2A_1LAYER_DEFAULT, S2A_FULL_DEFAULT, SAMPLES_PER_FRAME_16K,
                                   STAGE1_DEFAULTS, TASKS, Request, S2ASettings, apply_overrides, chunk_starts, stitch,
                                   tts_target_len)
from metis.models.decoding import DecodeConfig, FastDecoding, bucket_length
from metis.models.llama_nar import estimator_of

ModelOrLoader = nn.Module | Callable[[], nn.Module]


@dataclass
class Result:
    """What happened to one request (one line of the results jsonl)."""

    index: int
    task: str
    output: str | None
    ok: bool
    error: str | None = None
    audio_seconds: float | None = None
    compute_seconds: float | None = None
    chunks: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.audio_seconds and self.compute_seconds is not None:
            d["rtf"] = self.compute_seconds / self.audio_seconds
        return d


def _item_seed(seed: int, chunk: int) -> int:
    return (int(seed) * 1_000_003 + chunk * 7919) % (2**63 - 1)


def batch_items(items: Sequence[Item], batch_size: int, buckets: Sequence[int] | None = None) -> list[list[Item]]:
    """Length-sorted batches of at most batch_size items sharing task and settings (and, with shape
    buckets, the bucket of their prompt + target length, so that a batch's passes share one shape)."""
    groups: dict[tuple, list[Item]] = {}
    for it in items:
        size = None if buckets is None else bucket_length(it.prompt_ids.numel() + it.target_len, buckets)
        groups.setdefault((it.task, it.stage1, it.s2a_1layer, it.s2a_full, size), []).append(it)
    batches = []
    for group in groups.values():
        group.sort(key=lambda it: it.prompt_ids.numel() + it.target_len)
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


class Pipeline:
    """Checkpoint -> tokens -> waveform for the inference tasks of the registry (`metis.tasks`).

    Args:
        stage1: task -> MetisStage1 (or a zero-argument loader called on first use). Key "omni" serves
            the tasks of the registry's `omni.serves` it lacks (phones for tts, adapter for se / tse / vc).
        s2a_1layer, s2a_full: the MaskGCT S2A models (or loaders).
        semantic: a SemanticTokenizer (features() and encode() on 16 kHz waveforms).
        acoustic: an AcousticTokenizer (encode() at 24 kHz, decode()).
        g2p: text -> (phones, ids), called as g2p(text, language=...); default metis.text.G2P on first tts.
        device: where the models run.
        fast: batched CFG, top-k-only sampling, bf16 autocast on CUDA (see metis.models.decoding);
            False decodes every row exactly as the reference decodes it alone.
        precision: fast mode's arithmetic: "auto" (bf16 on CUDA, fp32 on a CPU), "bf16" (bf16 autocast
            on any device: the fastest CPU path on CPUs with bf16 units), "fp32".
        buckets: fast mode's static lengths (e.g. [256, 512, 1024, 2048]): items are batched per bucket
            and every estimator pass is padded to its bucket (padding masked: the same tokens), so
            shapes repeat across requests; with cuda_graphs each shape is captured once as a CUDA graph.
            None: no padding, the passes run packed.
        batch_size: items per stage-1 / S2A batch (length-sorted).
        chunk_seconds, overlap_seconds: windowing of long sources of chunked tasks (tasks.py); 0 disables.
        stage1_settings: task -> {n_timesteps, cfg, rescale_cfg, temp, filter_thres} replacing the
            published defaults (partial dicts allowed).
        s2a_1layer_settings, s2a_full_settings: {n_timesteps, cfg, rescale_cfg, temp, filter_thres}.
        noise_device: where the per-item generators live; default cpu (as the reference draws), or the
            model device when fast.
        progress: show a tqdm bar in run().
        compile: regional `torch.compile` of each model's estimator layers (`LlamaNAR.compile_layers`).
    """

    def __init__(self, stage1: Mapping[str, ModelOrLoader], s2a_1layer: ModelOrLoader, s2a_full: ModelOrLoader,
                 semantic, acoustic, *, g2p: Callable | None = None, device: str | torch.device = "cpu",
                 fast: bool = False, batch_size: int = 8, chunk_seconds: float = 20.0, overlap_seconds: float = 1.0,
                 stage1_settings: Mapping[str, Mapping[str, Any]] | None = None,
                 s2a_1layer_settings: Mapping[str, Any] | None = None, s2a_full_settings: Mapping[str, Any] | None = None,
                 noise_device: str | torch.device | None = None, progress: bool = True, compile: bool = False,
                 precision: str = "auto", buckets: Sequence[int] | None = None, cuda_graphs: bool = True):
        self.device = torch.device(device)
        self._stage1: dict[str, ModelOrLoader] = dict(stage1)
        unknown = sorted(set(self._stage1) - set(registry.TASKS))
        if unknown:
            raise KeyError(f"stage1 has models for unknown task(s) {unknown}; tasks are {tuple(registry.TASKS)}")
        self._s2a = {"s2a_1layer": s2a_1layer, "s2a_full": s2a_full}
        self.semantic = semantic
        self.acoustic = acoustic
        self._g2p = g2p
        if not fast and (precision == "bf16" or buckets):
            raise ValueError(f"precision={precision!r} / buckets={buckets!r} are fast-mode options: set fast=true "
                             "(faithful decoding stays the reference's exact fp32 computation)")
        self.fast = FastDecoding(precision, None if not buckets else tuple(buckets), cuda_graphs) if fast else False
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.chunk_frames = int(round(chunk_seconds * 50)) if chunk_seconds else 0
        self.overlap_frames = int(round(overlap_seconds * 50))
        if self.chunk_frames and not 2 <= self.overlap_frames < self.chunk_frames:
            raise ValueError(f"overlap_seconds={overlap_seconds} must give at least 2 frames (40 ms) and less than chunk_seconds={chunk_seconds}")
        self.noise_device = torch.device(noise_device) if noise_device is not None else (self.device if fast else torch.device("cpu"))
        self.progress = progress
        self.compile = compile
        self.stage1_settings: dict[str, DecodeConfig] = {}
        for task in TASKS:
            self.stage1_settings[task], _, _ = apply_overrides(STAGE1_DEFAULTS[task], S2A_1LAYER_DEFAULT, S2A_FULL_DEFAULT,
                                                               dict((stage1_settings or {}).get(task) or {}), f"stage1_settings.{task}")
        unknown = sorted(set(stage1_settings or {}) - set(TASKS))
        if unknown:
            raise KeyError(f"stage1_settings for unknown task(s) {unknown}; tasks are {TASKS}")
        _, self.s2a_1layer_settings, self.s2a_full_settings = apply_overrides(
            STAGE1_DEFAULTS["tts"], S2A_1LAYER_DEFAULT, S2A_FULL_DEFAULT,
            {"s2a_1layer": dict(s2a_1layer_settings or {}), "s2a_full": dict(s2a_full_settings or {})}, "s2a settings")
        self._prompt_cache: dict[tuple[str, str], Any] = {}
        self._on_device: set[str] = set()

    # ------------------------------------------------------------------------------ components

    def _ready(self, model_or_loader: ModelOrLoader) -> nn.Module:
        model = model_or_loader if isinstance(model_or_loader, nn.Module) else model_or_loader()
        model = model.to(self.device).eval().requires_grad_(False)
        if self.compile:
            estimator_of(model).compile_layers()
        return model

    def stage1_model(self, task: str) -> nn.Module:
        omni = "omni" in self._stage1 and task in registry.get("omni").serves
        key = task if task in self._stage1 else "omni" if omni else None
        if key is None:
            raise KeyError(f"no stage-1 model for task {task!r}: the pipeline has {sorted(self._stage1)}"
                           + ("" if registry.get(task).checkpoint else f"; nothing is published for {task}: give your "
                              f"fine-tune's export (pipeline.stage1={{{task}:outputs/<run>/export}})"))
        if key not in self._on_device:
            self._stage1[key] = self._ready(self._stage1[key])
            self._on_device.add(key)
        return self._stage1[key]

    def s2a_model(self, name: str) -> nn.Module:
        if name not in self._on_device:
            self._s2a[name] = self._ready(self._s2a[name])
            self._on_device.add(name)
        return self._s2a[name]

    def g2p(self, text: str, language: str) -> list[int]:
        if self._g2p is None:
            from metis.text import G2P

            self._g2p = G2P()
        return list(self._g2p(text, language=language)[1])

    # ------------------------------------------------------------------------------ preparation

    def _prompt_tokens(self, path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A prompt file -> (16 kHz wav, semantic ids (tp,), acoustic codes (p, q)); cached per path."""
        key = ("prompt", str(path))
        if key not in self._prompt_cache:
            w16 = audio.load_tensor(path, 16000)
            w24 = audio.load_tensor(path, OUTPUT_SAMPLE_RATE)
            ids = self.semantic.encode([w16])[0].cpu()
            codes = self.acoustic.encode([w24])[0].cpu()
            self._prompt_cache[key] = (w16, ids, codes)
        return self._prompt_cache[key]

    def _windows(self, n16: int) -> list[tuple[int, int, int]]:
        """(start frame, start sample, end sample) at 16 kHz of each window of a source."""
        n_frames = n16 // SAMPLES_PER_FRAME_16K
        starts = chunk_starts(n_frames, self.chunk_frames, self.overlap_frames)
        spans = []
        for k, s in enumerate(starts):
            end = n16 if k == len(starts) - 1 else (s + self.chunk_frames) * SAMPLES_PER_FRAME_16K
            spans.append((s, s * SAMPLES_PER_FRAME_16K, end))
        return spans

    def prepare(self, index: int, req: Request) -> list[Item]:
        """Tokenise one request's inputs into decoding items (several for a chunked long source)."""
        req.validate()
        st1, s2a1, s2af = apply_overrides(self.stage1_settings[req.task], self.s2a_1layer_settings, self.s2a_full_settings,
                                          req.overrides, f"request {index} overrides")
        common = dict(request=index, task=req.task, stage1=st1, s2a_1layer=s2a1, s2a_full=s2af)
        q = self.acoustic.num_quantizers
        spec = registry.get(req.task)
        if spec.input == "text":
            _, ids, codes = self._prompt_tokens(req.prompt)
            phones = torch.tensor(self.g2p(req.prompt_text, req.language) + self.g2p(req.text, req.language), dtype=torch.long)
            target = tts_target_len(ids.numel(), req.text, req.prompt_text, req.target_seconds)
            return [Item(chunk=0, start=0, prompt_ids=ids, target_len=target, acoustic_prompt=codes, keep_prompt=True,
                         phones=phones, seed=_item_seed(req.seed, 0), **common)]
        if spec.input == "video":
            _, ids, codes = self._prompt_tokens(req.prompt)
            vis = upsample_visual(load_video_features(req.video_features))  # (2 T_v, c)
            cond = torch.cat([vis.new_zeros(ids.numel(), vis.shape[1]), vis])
            return [Item(chunk=0, start=0, prompt_ids=ids, target_len=vis.shape[0], acoustic_prompt=codes, keep_prompt=True,
                         finetune_cond=cond, seed=_item_seed(req.seed, 0), **common)]
        # an audio source: windows of it (chunked tasks), each with the whole prompt (prompted tasks)
        src16 = audio.load_tensor(req.input, 16000)
        if not spec.prompt:
            p16, ids, codes = None, torch.zeros(0, dtype=torch.long), torch.zeros(0, q, dtype=torch.long)
        else:
            p16, ids, codes = self._prompt_tokens(req.prompt)
        items = []
        windows = self._windows(src16.numel()) if spec.chunked else [(0, 0, src16.numel())]
        for k, (start, a, b) in enumerate(windows):
            chunk = src16[a:b]
            wav = chunk if p16 is None else torch.cat([p16, chunk])
            feats = self.semantic.features([wav])[0].cpu()  # (T_total, c): finetune_cond over prompt + source
            target = feats.shape[0] - ids.numel()
            if target < 1:
                raise ValueError(f"request {index}: source window {k} of {req.input} gives no frame after the prompt")
            items.append(Item(chunk=k, start=start, prompt_ids=ids, target_len=target, acoustic_prompt=codes,
                              keep_prompt=spec.prompt, finetune_cond=feats, seed=_item_seed(req.seed, k), **common))
        return items

    # ------------------------------------------------------------------------------ decoding

    @torch.no_grad()
    def decode_items(self, items: Sequence[Item]) -> list[torch.Tensor]:
        """One batch of items sharing task and settings -> per item its 24 kHz waveform (T_a x 480,)."""
        if len({it.task for it in items}) != 1:
            raise ValueError("a batch must share its task")
        return generate(items, self.stage1_model(items[0].task), self.s2a_model("s2a_1layer"), self.s2a_model("s2a_full"),
                        decode=lambda codes: self.acoustic.decode(codes.to(self.acoustic.device)), fast=self.fast,
                        noise_device=self.noise_device).wavs

    def __call__(self, request: Request) -> torch.Tensor:
        """Run one request and return its waveform (n,) at 24 kHz (also written to request.output if set)."""
        result = self.run([request], progress=False)[0]
        if not result.ok:
            raise RuntimeError(f"{request.task} request failed: {result.error}")
        return self.last_outputs[0]

    def run(self, requests: Sequence[Request], progress: bool | None = None,
            on_result: Callable[[Result], None] | None = None) -> list[Result]:
        """Run many requests in length-sorted batches; a failing request is reported, the rest go on.

        Writes each successful request's wav to its `output` (when set). `self.last_outputs` keeps the
        waveforms of this call (None for failures).
        """
        from tqdm.auto import tqdm

        results = [Result(index=i, task=r.task, output=r.output, ok=False, id=r.id) for i, r in enumerate(requests)]
        items: list[Item] = []
        for i, req in enumerate(requests):
            try:
                its = self.prepare(i, req)
                items += its
                results[i].chunks = len(its)
                results[i].settings = {"stage1": asdict(its[0].stage1), "s2a_1layer": asdict(its[0].s2a_1layer),
                                       "s2a_full": asdict(its[0].s2a_full), "seed": req.seed, "fast": bool(self.fast),
                                       **({"precision": self.fast.precision} if self.fast else {})}
            except Exception as e:  # noqa: BLE001 - reported per request
                results[i].error = f"{type(e).__name__}: {e}"
        batches = batch_items(items, self.batch_size, self.fast.buckets if self.fast else None)
        wavs: dict[tuple[int, int], torch.Tensor] = {}
        compute = [0.0] * len(requests)
        bar = tqdm(total=len(items), desc="infer", unit="item", disable=not (self.progress if progress is None else progress))
        for batch in batches:
            t0 = time.perf_counter()
            try:
                outs = self.decode_items(batch)
            except Exception:  # noqa: BLE001 - isolate the failing item(s): one at a time
                outs = []
                for it in batch:
                    try:
                        outs.append(self.decode_items([it])[0])
                    except Exception as e:  # noqa: BLE001
                        outs.append(None)
                        results[it.request].error = results[it.request].error or f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            total = sum(it.prompt_ids.numel() + it.target_len for it in batch)
            for it, w in zip(batch, outs):
                compute[it.request] += dt * (it.prompt_ids.numel() + it.target_len) / total
                if w is not None:
                    wavs[(it.request, it.chunk)] = w
            bar.update(len(batch))
        bar.close()

        self.last_outputs: list[torch.Tensor | None] = [None] * len(requests)
        for i, req in enumerate(requests):
            res = results[i]
            if res.error is None and res.chunks:
                try:
                    its = [it for it in items if it.request == i]
                    its.sort(key=lambda it: it.chunk)
                    wav = stitch([wavs[(i, it.chunk)] for it in its], [it.start for it in its])
                    if not torch.isfinite(wav).all():
                        raise FloatingPointError("the generated waveform has non-finite samples")
                    if req.output:
                        audio.save(req.output, wav)
                    self.last_outputs[i] = wav
                    res.ok = True
                    res.audio_seconds = wav.numel() / OUTPUT_SAMPLE_RATE
                    res.compute_seconds = compute[i]
                except Exception as e:  # noqa: BLE001
                    res.error = f"{type(e).__name__}: {e}"
            if on_result is not None:
                on_result(res)
        return results

