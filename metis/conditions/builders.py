"""Batch -> task inputs: the conditions of every fine-tuning task, simulated on the fly from clean speech.

A builder turns a loader batch (`metis.data.collate`: `wav16`, `sem`, `vis`, `text`, `speaker`, ...)
into the keyword arguments of `MetisStage1.forward` for one task (docs/reference.md §6, docs/reference.md §10.6):

    task  x0 (target tokens)             finetune_cond (adapter input)              prompt / phones
    se    tokens(clean)                  feats(degrade(clean))                      no prompt (prompt_len 0)
    tse   [tokens(prompt); tokens(clean)] feats([prompt_wav ; mix(clean, other)])   prompt_len = len(prompt)
    vc    [tokens(prompt); tokens(clean)] feats([prompt_wav ; perturb(clean)])      prompt_len = len(prompt)
    l2s   tokens(utterance)              [zeros(2 v_p) ; upsample×2(vis[v_p:])]     prompt_len = 2 v_p
    tts   tokens(utterance)              none                                       phones = G2P(text); model draws the prompt
    omni  one of the above per batch, drawn with configured weights

Waveform-level simulation is `metis.conditions`; the features are those of the configured
extractor (`SemanticTokenizer.features` for real runs, `KMeansTokenizer.features` for the demo),
computed by the caller's extractor under no_grad. Every random draw comes from the `generator`
passed in, so a batch's conditions are a function of (batch, seed).

Frame alignment (docs/reference.md Q9): features of a concatenated waveform can be a frame longer or shorter than the
concatenated tokens; `align_frames` crops or repeats the last frame so that the condition has exactly
the token length, and the offsets are reported in the stats (`cond_frame_offset`).

Prompts for tse/vc come from a `SpeakerReservoir` of earlier utterances of the same speaker. When
it has none yet (a speaker's first utterances, single-utterance speakers), the prompt is the
leading segment of the utterance itself and the target is the rest; such samples are counted
(`prompt_fallback` in the stats, logged as `train/cond_prompt_fallback`).

Axes: b batch, n samples (16 kHz), t frames (50 Hz), c condition features, p phones, v visual frames (25 fps).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch

from metis import conditions as C


class FeatureExtractor(Protocol):
    """What builders need from the extractor: features and (when shards carry no tokens) codes."""

    def features(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]: ...  # (n_i,) -> (t_i, c)

    def encode(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]: ...  # (n_i,) -> (t_i,)


@dataclass
class TaskInputs:
    """Inputs of `MetisStage1.forward` for one batch, plus what the simulation did.

    Attributes:
        task: which task built it (for omni: the task drawn for this batch).
        x0: (b, t) int64 target tokens (prompt included). x_mask: (b, t) float, 1 = valid.
        finetune_cond: (b, t, c) adapter input aligned with x0, or None.
        prompt_len: (b,) int64 prompt frames kept unmasked, or None (the model draws them).
        phone_id, phone_mask: (b, p) phone prefix and its validity, or None.
        info: per-sample dicts of what was drawn (`metis.conditions` infos).
        stats: scalar summaries for logging.
        cond_wavs: the waveforms the condition features were computed on (to inspect or listen to).
    """

    task: str
    x0: torch.Tensor
    x_mask: torch.Tensor
    finetune_cond: torch.Tensor | None = None
    prompt_len: torch.Tensor | None = None
    phone_id: torch.Tensor | None = None
    phone_mask: torch.Tensor | None = None
    info: list[dict] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    cond_wavs: list[torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> "TaskInputs":
        for name in ("x0", "x_mask", "finetune_cond", "prompt_len", "phone_id", "phone_mask"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def model_kwargs(self) -> dict[str, Any]:
        return {"x0": self.x0, "x_mask": self.x_mask, "phone_id": self.phone_id, "phone_mask": self.phone_mask,
                "finetune_cond": self.finetune_cond, "prompt_len": self.prompt_len}


@dataclass
class Utterance:
    key: str
    speaker: str
    wav: torch.Tensor  # (n,) float at 16 kHz
    tokens: torch.Tensor  # (t,) int64 at 50 Hz
    text: str = ""
    language: str = ""


# ------------------------------------------------------------------------------------------ helpers

def align_frames(feat: torch.Tensor, n: int) -> torch.Tensor:
    """(t', c) -> (n, c): crop the tail, or repeat the last frame (zeros when t' = 0) up to n frames."""
    t = feat.shape[0]
    if t >= n:
        return feat[:n]
    tail = feat[-1:] if t else feat.new_zeros(1, feat.shape[1])
    return torch.cat([feat, tail.expand(n - t, -1)])


def pad_rows(rows: Sequence[torch.Tensor], value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_i, ...) tensors -> (b, max t, ...) padded with `value`, and the validity mask (b, max t) float."""
    lens = torch.tensor([r.shape[0] for r in rows])
    out = rows[0].new_full((len(rows), int(lens.max()), *rows[0].shape[1:]), value)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out, (torch.arange(out.shape[1])[None] < lens[:, None]).float()


def utterances(batch: Mapping, extractor: FeatureExtractor | None = None) -> list[Utterance]:
    """The clean utterances of a batch: waveform `wav16` cut to `wav16_lens`, tokens `sem` cut to
    `sem_lens` (or encoded by `extractor` when the batch carries no tokens)."""
    missing = [k for k in ("wav16", "wav16_lens") if k not in batch]
    if missing:
        raise KeyError(f"this task simulates its conditions from clean audio: the batch lacks {missing} "
                       f"(add wav16 to data.fields; batch keys: {sorted(batch)})")
    wavs = [w[: int(n)].float().cpu() for w, n in zip(batch["wav16"], batch["wav16_lens"])]
    if "sem" in batch:
        lens = batch.get("sem_lens")
        if lens is None:
            lens = batch["sem_mask"].sum(1).long()
        tokens = [s[: int(n)].long().cpu() for s, n in zip(batch["sem"], lens)]
    elif extractor is not None:
        with torch.no_grad():
            tokens = [t.long().cpu() for t in extractor.encode(wavs)]
    else:
        raise KeyError(f"the batch has no 'sem' tokens and no extractor was given to encode wav16 (keys: {sorted(batch)})")
    b = len(wavs)
    keys = list(batch.get("key") or [f"item{i}" for i in range(b)])
    speakers = list(batch.get("speaker") or [""] * b)
    texts = list(batch.get("text") or [""] * b)
    langs = list(batch.get("language") or [""] * b)
    return [Utterance(keys[i], speakers[i] or f"<unknown:{keys[i]}>", wavs[i], tokens[i], texts[i], langs[i])
            for i in range(b)]


def _features(extractor: FeatureExtractor, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [f.float() for f in extractor.features(wavs)]


def _offsets(feats: list[torch.Tensor], lengths: list[int]) -> float:
    return float(sum(abs(f.shape[0] - n) for f, n in zip(feats, lengths)) / max(len(lengths), 1))


def featurize(inputs: TaskInputs, extractor: FeatureExtractor | None) -> TaskInputs:
    """Fill `finetune_cond` from the simulated `cond_wavs` (tasks whose condition is audio): the
    extractor's features of each waveform, aligned to its row's token length (docs/reference.md Q9). Inputs whose
    condition needs no features (tts, l2s) come back unchanged."""
    if inputs.cond_wavs is None or inputs.finetune_cond is not None:
        return inputs
    if extractor is None:
        raise ValueError(f"{inputs.task} conditions need a feature extractor (model.features)")
    feats = _features(extractor, inputs.cond_wavs)
    lengths = [int(n) for n in inputs.x_mask.sum(1).long().tolist()]
    cond, _ = pad_rows([align_frames(f.to(inputs.x0.device), n) for f, n in zip(feats, lengths)])
    inputs.finetune_cond = cond
    inputs.stats["cond_frame_offset"] = _offsets(feats, lengths)
    return inputs


class ConditionBuilder:
    """Base: batch -> TaskInputs. Subclasses set `task` and implement `simulate`.

    `simulate` does the waveform work (no model, no extractor needed when the batch carries tokens),
    so it can run in the DataLoader workers (`ConditionStage`); `featurize` then computes the features
    where the extractor runs. `builder(batch, extractor, generator, split)` does both.
    `reset(split)` is called at the start of each validation pass so that its conditions are the same
    at every evaluation.
    """

    task: str = ""
    uses_features: bool = True

    def simulate(self, batch: Mapping, generator: torch.Generator, split: str = "train",
                 extractor: FeatureExtractor | None = None) -> TaskInputs:
        """The batch's task inputs with the condition waveforms (`cond_wavs`), features not computed;
        `extractor` only encodes tokens when the batch carries none."""
        raise NotImplementedError  # every task below implements it

    def __call__(self, batch: Mapping, extractor: FeatureExtractor | None, generator: torch.Generator,
                 split: str = "train") -> TaskInputs:
        if self.uses_features and extractor is None:
            raise ValueError(f"{self.task} conditions need a feature extractor (model.features)")
        return featurize(self.simulate(batch, generator, split, extractor), extractor)

    def reset(self, split: str) -> None:
        return None

    def banks(self) -> list:
        """The noise / RIR banks the simulation draws files from (their `skips` count refused files)."""
        return []


def _banks(simulator: Any) -> list:
    """A simulator's banks (`SEDegrader.banks`, `TSEMixer.banks`); none for one that has no such method."""
    return list(getattr(simulator, "banks", list)())


class ConditionStage:
    """The condition simulation as a stage of the loader pipeline, run in the DataLoader workers:
    each batch gets `batch["task_inputs"]` = `builder.simulate(batch, generator, split)`.

    Seeds: batch i of a pass draws from a generator seeded by (`seed`, split, the pass key, start + i).
    The shard loader's pass key is (stream seed, rank x worker slot), and for training `start` is the
    number of batches that slot had emitted when its stream (re)started (set in the worker from the
    slot's saved position, metis/data/resume.py), so a resumed run draws exactly the conditions of the
    uninterrupted run; for validation start is 0, so every evaluation sees the same conditions.
    Bank files refused by the audio check while simulating a batch are added to its `skipped`
    counts (`noise_<reason>`, `rir_<reason>`), so the trainer logs them with the loader's skips.

    Args:
        builder: a ConditionBuilder (`configs/task/<name>.yaml`'s `data.conditions`).
        seed: the run's seed (`cond_seed`).
    """

    def __init__(self, builder: ConditionBuilder, seed: int = 0):
        self.builder = builder
        self.seed = int(seed)
        self.start = 0

    def __call__(self, batches: Iterator[dict], split: str, pass_key: str) -> Iterator[dict]:
        self.builder.reset(split)  # a new pass: validation reservoirs start empty every time
        start = self.start if split == "train" else 0
        for i, batch in enumerate(batches, start=start):
            seed = random.Random(f"{self.seed}/{split}/{pass_key}/{i}").getrandbits(63)
            inputs = self.builder.simulate(batch, torch.Generator().manual_seed(seed), split)
            skipped = dict(batch.get("skipped") or {})
            for bank in self.builder.banks():
                for reason, n in bank.skips.delta().items():
                    skipped[reason] = skipped.get(reason, 0) + n
            yield {**batch, "skipped": skipped, "task_inputs": inputs}


# --------------------------------------------------------------------------------------------- SE

class SEConditions(ConditionBuilder):
    """Speech enhancement, and any restoration task like it: condition = features of the degraded
    audio, target = tokens of the clean audio, no prompt.

    Args:
        degrader: `degrader(wav, generator, others=[...]) -> (degraded wav, info)`: for se a
            `metis.conditions.SEDegrader` (noise at a random SNR, reverb, clipping, band-limiting; each
            knob in its config; the other utterances of the batch are offered for babble); another
            restoration task passes its own simulator.
        task: the task these inputs train (the registry name; "se" by default).
    """

    task = "se"

    def __init__(self, degrader: Any, task: str = "se"):
        self.degrader = degrader
        self.task = task

    def banks(self) -> list:
        return _banks(self.degrader)

    def simulate(self, batch, generator, split="train", extractor=None):
        utts = utterances(batch, extractor)
        degraded, infos = [], []
        for i, u in enumerate(utts):
            others = [o.wav for j, o in enumerate(utts) if j != i]
            wav, info = self.degrader(u.wav, generator, others=others)
            degraded.append(wav)
            infos.append(dict(info))
        x0, x_mask = pad_rows([u.tokens for u in utts])
        stats = {}
        snrs = [float(i["snr_db"]) for i in infos if i.get("snr_db") is not None]
        if snrs:
            stats["snr_db"] = sum(snrs) / len(snrs)
        return TaskInputs(self.task, x0, x_mask, None, torch.zeros(len(utts), dtype=torch.long), info=infos, stats=stats,
                          cond_wavs=degraded)


# ------------------------------------------------------------------------------------ TSE and VC

class PromptedConditions(ConditionBuilder):
    """Shared by tse and vc: condition = features of [prompt_wav ; source_wav], target = tokens of
    [prompt ; clean utterance], the prompt frames kept unmasked.

    Args:
        per_speaker, max_speakers: size of the `SpeakerReservoir` of earlier utterances the
            prompts are drawn from (one reservoir for training, one for validation).
        max_prompt_frames: longer prompts are cut to a random window of this many frames.
        fallback_prompt_ratio: without a reservoir prompt, the leading (lo, hi) fraction of the
            utterance is the prompt and the rest the target.
        p_drop_prompt: probability per batch of training without a prompt (x0 and condition keep
            only the target part), so that the unconditional CFG branch is trained (docs/reference.md Q8).
        sample_rate, frame_rate: samples per second of the audio and frames per second of the tokens.
    """

    def __init__(self, per_speaker: int = 8, max_speakers: int = 2000, max_prompt_frames: int = 300,
                 fallback_prompt_ratio: Sequence[float] = (0.2, 0.4), p_drop_prompt: float = 0.0,
                 sample_rate: int = 16000, frame_rate: float = 50.0):
        lo, hi = (float(v) for v in fallback_prompt_ratio)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"fallback_prompt_ratio must satisfy 0 < lo <= hi < 1, got {fallback_prompt_ratio}")
        if max_prompt_frames < 1:
            raise ValueError(f"max_prompt_frames must be >= 1, got {max_prompt_frames}")
        self.fallback_prompt_ratio = (lo, hi)
        self.max_prompt_frames = int(max_prompt_frames)
        self.p_drop_prompt = float(p_drop_prompt)
        self.hop = int(round(sample_rate / frame_rate))
        self._reservoir_args = (per_speaker, max_speakers)
        self.reservoirs = {"train": C.SpeakerReservoir(per_speaker, max_speakers),
                           "val": C.SpeakerReservoir(per_speaker, max_speakers)}

    def reset(self, split: str) -> None:
        if split != "train":
            self.reservoirs[split] = C.SpeakerReservoir(*self._reservoir_args)

    def source(self, target: Utterance, utts: list[Utterance], generator: torch.Generator,
               split: str) -> tuple[torch.Tensor, dict]:
        """The degraded source for `target.wav` (mixture for tse, perturbed speech for vc)."""
        raise NotImplementedError  # TSEConditions and VCConditions implement it

    def _prompt(self, u: Utterance, generator: torch.Generator, split: str):
        """-> (prompt wav, prompt tokens, target wav, target tokens, fell_back)."""
        reservoir = self.reservoirs.setdefault(split, C.SpeakerReservoir(*self._reservoir_args))
        drawn = reservoir.draw(u.speaker, u.key, generator)
        if drawn is not None and drawn[2] is not None and len(drawn[2]) > 0:
            _, p_wav, p_tok = drawn
            p_tok = p_tok.long()
            p_wav = p_wav[: len(p_tok) * self.hop]
            fell_back = False
            target_wav, target_tok = u.wav, u.tokens
        else:
            if len(u.tokens) < 2:
                raise ValueError(f"utterance {u.key!r} has {len(u.tokens)} token(s): too short to split into prompt and target")
            lo, hi = self.fallback_prompt_ratio
            frac = lo + (hi - lo) * float(torch.rand((), generator=generator))
            k = min(max(int(frac * len(u.tokens)), 1), len(u.tokens) - 1)
            p_wav, p_tok = u.wav[: k * self.hop], u.tokens[:k]
            target_wav, target_tok = u.wav[k * self.hop:], u.tokens[k:]
            fell_back = True
        if len(p_tok) > self.max_prompt_frames:  # a random window, same span of samples and frames
            start = int(torch.randint(len(p_tok) - self.max_prompt_frames + 1, (), generator=generator))
            p_tok = p_tok[start: start + self.max_prompt_frames]
            p_wav = p_wav[start * self.hop: (start + self.max_prompt_frames) * self.hop]
        return p_wav, p_tok, target_wav, target_tok, fell_back

    def simulate(self, batch, generator, split="train", extractor=None):
        utts = utterances(batch, extractor)
        drop = float(torch.rand((), generator=generator)) < self.p_drop_prompt if split == "train" else False
        cond_wavs, targets, prompt_lens, infos, fallbacks = [], [], [], [], 0
        for u in utts:
            if drop:  # no prompt: the whole utterance is the target
                p_wav, p_tok, t_wav, t_tok, fell_back = u.wav[:0], u.tokens[:0], u.wav, u.tokens, False
            else:
                p_wav, p_tok, t_wav, t_tok, fell_back = self._prompt(u, generator, split)
            fallbacks += fell_back
            src, info = self.source(Utterance(u.key, u.speaker, t_wav, t_tok, u.text, u.language), utts, generator, split)
            info = {**info, "prompt_fallback": fell_back, "prompt_frames": 0 if drop else len(p_tok)}
            if drop:
                cond_wavs.append(src)
                targets.append(t_tok)
                prompt_lens.append(0)
            else:
                cond_wavs.append(torch.cat([p_wav, src]))
                targets.append(torch.cat([p_tok, t_tok]))
                prompt_lens.append(len(p_tok))
            infos.append(info)
        reservoir = self.reservoirs.setdefault(split, C.SpeakerReservoir(*self._reservoir_args))
        for u in utts:  # after drawing: an utterance never prompts itself
            reservoir.add(u.speaker, u.key, u.wav, u.tokens)
        x0, x_mask = pad_rows(targets)
        stats = {"prompt_fallback": fallbacks / len(utts),
                 "prompt_dropped": float(drop)}
        same = [i["same_speaker_interferer"] for i in infos if "same_speaker_interferer" in i]
        if same:
            stats["same_speaker_interferer"] = sum(same) / len(same)
        return TaskInputs(self.task, x0, x_mask, None, torch.tensor(prompt_lens, dtype=torch.long), info=infos, stats=stats,
                          cond_wavs=cond_wavs)


class TSEConditions(PromptedConditions):
    """Target speaker extraction: the utterance mixed with another speaker's utterance at a random SIR
    (+ optional noise; both knobs of the `mixer`, a `metis.conditions.TSEMixer`); the enrollment prompt
    is another utterance of the target speaker. The interferer is a batch utterance of another
    speaker, else one of another speaker from the reservoir; with neither (a one-speaker stream) it is
    another utterance of the same speaker, counted as `same_speaker_interferer`."""

    task = "tse"

    def __init__(self, mixer: Any, **kwargs):
        super().__init__(**kwargs)
        self.mixer = mixer

    def banks(self) -> list:
        return _banks(self.mixer)

    def source(self, target, utts, generator, split):
        pool = [(o.key, o.wav) for o in utts if o.speaker != target.speaker]
        if not pool:
            drawn = self.reservoirs[split].draw_other(target.speaker, generator)
            if drawn is not None:
                pool = [(drawn[1], drawn[2])]
        same = not pool
        if same:
            pool = [(o.key, o.wav) for o in utts if o.key != target.key] or [(target.key, target.wav.flip(0))]
        key, other = pool[int(torch.randint(len(pool), (), generator=generator))]
        mixture, info = self.mixer(target.wav, other, generator)
        return mixture, {**dict(info), "interferer": key, "same_speaker_interferer": same}


class VCConditions(PromptedConditions):
    """Voice conversion: the source is the timbre-perturbed utterance (`metis.conditions.VCPerturber`),
    the prompt another utterance of the same speaker, the target the clean utterance's tokens."""

    task = "vc"

    def __init__(self, perturber: Any, **kwargs):
        super().__init__(**kwargs)
        self.perturber = perturber

    def source(self, target, utts, generator, split):
        wav, info = self.perturber(target.wav, generator)
        return wav, dict(info)


# -------------------------------------------------------------------------------------------- L2S

class L2SConditions(ConditionBuilder):
    """Lip-to-speech: visual features `vis` (v, 768) at 25 fps, upsampled ×2 to 50 Hz with zeros over
    the prompt span (`metis.conditions.upsample_visual`). The prompt is the leading
    `prompt_ratio` (lo, hi) fraction of the utterance's own tokens; its video frames are dropped.

    Args:
        prompt_ratio: (lo, hi) fraction of the visual frames whose tokens become the prompt.
        p_drop_prompt: probability per batch of no prompt.
    """

    task = "l2s"
    uses_features = False

    def __init__(self, prompt_ratio: Sequence[float] = (0.1, 0.4), p_drop_prompt: float = 0.0):
        lo, hi = (float(v) for v in prompt_ratio)
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"prompt_ratio must satisfy 0 <= lo <= hi < 1, got {prompt_ratio}")
        self.prompt_ratio = (lo, hi)
        self.p_drop_prompt = float(p_drop_prompt)

    def simulate(self, batch, generator, split="train", extractor=None):
        missing = [k for k in ("vis", "vis_lens", "sem", "sem_lens") if k not in batch]
        if missing:
            raise KeyError(f"l2s needs visual features and tokens: the batch lacks {missing} "
                           f"(data.fields must include vis and sem; keys: {sorted(batch)})")
        drop = split == "train" and float(torch.rand((), generator=generator)) < self.p_drop_prompt
        targets, conds, prompt_lens, offsets = [], [], [], []
        for vis, v_len, sem, s_len in zip(batch["vis"], batch["vis_lens"], batch["sem"], batch["sem_lens"]):
            vis, tokens = vis[: int(v_len)].float().cpu(), sem[: int(s_len)].long().cpu()
            lo, hi = self.prompt_ratio
            frac = lo + (hi - lo) * float(torch.rand((), generator=generator))
            n = min(len(tokens), 2 * len(vis))  # frames covered by both streams
            v_p = 0 if drop else min(int(frac * len(vis)), (n - 1) // 2)
            cond = C.upsample_visual(vis[v_p:], 2 * v_p)  # (2 v, c): zeros over the prompt
            offsets.append(abs(cond.shape[0] - len(tokens)))
            tokens = tokens[:n]
            targets.append(tokens)
            conds.append(align_frames(cond, n))
            prompt_lens.append(2 * v_p)
        x0, x_mask = pad_rows(targets)
        cond, _ = pad_rows(conds)
        stats = {"cond_frame_offset": sum(offsets) / len(offsets), "prompt_dropped": float(drop)}
        return TaskInputs(self.task, x0, x_mask, cond, torch.tensor(prompt_lens, dtype=torch.long), stats=stats)


class StandInL2SConditions(L2SConditions):
    """L2S on the offline demo corpus, which has no video: the visual stream `vis` is computed from each
    clean utterance (`metis.conditions.audio_stand_in`: 25 fps log-mel), then the conditions are built
    as for L2S. A stand-in, NOT lip features: it carries the speech content directly, so what a model
    learns from it says nothing about lip reading (the real task reads 768-d AV-HuBERT-style features).
    Needs `wav16` in the batch (data.fields [sem, wav16])."""

    def simulate(self, batch, generator, split="train", extractor=None):
        if "wav16" not in batch or "wav16_lens" not in batch:
            raise KeyError(f"the stand-in visual stream is computed from wav16: add it to data.fields (keys: {sorted(batch)})")
        vis = [C.audio_stand_in(w[: int(n)].float().cpu()) for w, n in zip(batch["wav16"], batch["wav16_lens"])]
        padded, mask = pad_rows(vis)
        return super().simulate({**batch, "vis": padded, "vis_lens": mask.sum(1).long()}, generator, split, extractor)


# -------------------------------------------------------------------------------------------- TTS

class TTSConditions(ConditionBuilder):
    """Text-to-speech: a phone prefix from `G2P` of the transcript (padded with PHONE_PAD_ID, with
    `phone_mask`), the tokens of the utterance as target, and the model's own prompt sampling
    (a prefix of the same utterance; the whole batch unprompted with probability cfg_scale).

    Args:
        language: used when the batch has no `language` field (or it is empty).
        cache_size: transcripts whose phones are kept (G2P runs espeak-ng).
    """

    task = "tts"
    uses_features = False

    def __init__(self, language: str = "en", cache_size: int = 100_000):
        self.language = language
        self.cache_size = cache_size
        self._g2p = None
        self._cache: dict[tuple[str, str], list[int]] = {}

    def phones(self, text: str, language: str) -> list[int]:
        key = (text, language)
        if key not in self._cache:
            if self._g2p is None:
                from metis.text import G2P

                self._g2p = G2P()
            _, ids = self._g2p(text, language=language)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[key] = list(ids)
        return self._cache[key]

    def simulate(self, batch, generator, split="train", extractor=None):
        from metis.text import PHONE_PAD_ID

        if "sem" not in batch and extractor is None:
            raise KeyError(f"tts needs 'sem' tokens or an extractor to encode wav16 (keys: {sorted(batch)})")
        if "sem" in batch:
            lens = batch.get("sem_lens", batch["sem_mask"].sum(1).long())
            tokens = [s[: int(n)].long().cpu() for s, n in zip(batch["sem"], lens)]
        else:
            tokens = [u.tokens for u in utterances(batch, extractor)]
        texts = batch.get("text")
        if texts is None:
            raise KeyError(f"tts needs the transcripts ('text') in the batch (keys: {sorted(batch)})")
        langs = batch.get("language") or [""] * len(texts)
        ids, empty = [], 0
        for text, lang in zip(texts, langs):
            p = self.phones(text, lang or self.language) if text.strip() else []
            if not p:  # nothing to say: one padded slot, masked out
                empty += 1
            ids.append(torch.tensor(p or [PHONE_PAD_ID], dtype=torch.long))
        phone_id, phone_mask = pad_rows(ids, PHONE_PAD_ID)
        phone_mask = phone_mask * (phone_id != PHONE_PAD_ID).float()
        x0, x_mask = pad_rows(tokens)
        return TaskInputs(self.task, x0, x_mask, phone_id=phone_id, phone_mask=phone_mask,
                          stats={"empty_text": empty / len(texts), "phones_per_frame": float(phone_mask.sum() / x_mask.sum())})


# ------------------------------------------------------------------------------------------- Omni

class OmniConditions(ConditionBuilder):
    """One model, several tasks: each batch is built by one task drawn with `weights`.

    Args:
        tasks: task name -> builder (tts, se, tse, vc; all with the same feature extractor).
        weights: task name -> sampling weight (missing names: weight 0).
    """

    task = "omni"

    def __init__(self, tasks: Mapping[str, ConditionBuilder], weights: Mapping[str, float]):
        unknown = sorted(set(weights) - set(tasks))
        if unknown:
            raise ValueError(f"omni weights name tasks without a builder: {unknown} (builders: {sorted(tasks)})")
        self.tasks = dict(tasks)
        self.names = [n for n in self.tasks if float(weights.get(n, 0.0)) > 0]
        if not self.names:
            raise ValueError(f"omni needs a positive weight for at least one of {sorted(self.tasks)}, got {dict(weights)}")
        self.weights = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float64)
        self.uses_features = any(self.tasks[n].uses_features for n in self.names)

    def reset(self, split: str) -> None:
        for b in self.tasks.values():
            b.reset(split)

    def banks(self) -> list:
        return [bank for b in self.tasks.values() for bank in b.banks()]

    def simulate(self, batch, generator, split="train", extractor=None):
        name = self.names[int(torch.multinomial(self.weights, 1, generator=generator))]
        out = self.tasks[name].simulate(batch, generator, split, extractor)
        out.stats[f"task_{name}"] = 1.0
        return out
