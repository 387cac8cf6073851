"""LightningDataModule over WebDataset shards (`metis.data.build_loader`), with the offline demo
corpus built on demand.

Training streams are endless and resampled (no rank runs dry); validation is finite and deterministic.
Batches are token-budgeted (`max_tokens` frames per device, padding included) inside the pipeline.
Validation batches are equalised across ranks (`EqualBatches`). A checkpoint holds the train
stream's exact position on every rank and worker (metis/data/resume.py), so a resumed run sees the
batches the uninterrupted run would have seen; a resume with another world size, worker count or
shard list cannot continue the saved positions and re-seeds the stream instead (`stream_seed`),
saying so in the log (docs/distributed.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from metis.audio import MAX_CLIPPED_FRACTION, MIN_STD
from metis.conditions.builders import ConditionStage
from metis.data.loader import build_loader
from metis.data.shards import TOKENIZER_MEMBER, expand_shards
from metis.lightning.fault_tolerance import EqualBatches
from metis.models.llama_nar import LlamaNAR, estimator_of


class ShardDataModule(L.LightningDataModule):
    """Token (or audio) shards for pre-training.

    Args:
        train_shards, val_shards: shard patterns (brace/glob/folder/URL); for the demo they are
            taken from the built corpus when left empty.
        codebook_size: size of the token vocabulary the shards hold (sizes the model's embedding).
        max_tokens: frames per batch per device, padding included (the paper: ~10K); real frames only
            when `packed`.
        packed: budget real frames (sum of lengths) instead of the padded area; None: when the
            trained net packs its batches (`model.net.packing` not "off": padding costs no compute).
        fields: what batches carry: "sem", "ac", "vis", "wav16", "wav24".
        min_dur, max_dur, min_std, max_clipped_fraction: the sample check (metis/data/validate.py):
            duration limits of the json, and the limits of `metis.audio.check` for decoded audio.
        tokenizer_identity: the identity of the tokenizer that must have made the shards; samples
            from another tokenizer are skipped and counted. For the demo it is read from the corpus.
        demo: settings of `metis.data.demo.DemoConfig`; when given, `prepare_data` builds the demo
            corpus if it is missing (on one process per node).
        conditions: a fine-tuning condition builder (`configs/task/<name>.yaml`): its waveform
            simulation runs in the loader workers (`ConditionStage`), each batch then carries
            `task_inputs`. cond_seed: its seed (the run's `seed`).
        demo_split: the split of the demo corpus to train on: "train" (the pre-training pool) or
            "task" (the fine-tuning set of other speakers); validation is always the held-out speakers.
        max_train_shards: train on the first N shards (sorted) only: a smaller fine-tuning set.
    """

    def __init__(self, train_shards: str | Sequence[str] | None = None, val_shards: str | Sequence[str] | None = None,
                 codebook_size: int = 8192, max_tokens: int = 10_000, val_max_tokens: int | None = None,
                 fields: Sequence[str] = ("sem",), num_workers: int = 2, val_num_workers: int = 0, seed: int = 0,
                 min_dur: float = 0.5, max_dur: float = 30.0, min_std: float = MIN_STD,
                 max_clipped_fraction: float = MAX_CLIPPED_FRACTION, shuffle_buffer: int = 500,
                 max_batch_size: int | None = None, tokenizer_identity: dict | None = None,
                 demo: dict | None = None, conditions: Any = None, cond_seed: int = 0,
                 demo_split: str = "train", max_train_shards: int | None = None,
                 packed: bool | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["conditions"], logger=False)  # plain values only (weights_only loads)
        self.condition_stage = None if conditions is None else ConditionStage(conditions, cond_seed)
        self.train_shards, self.val_shards = train_shards, val_shards
        self.tokenizer_identity = dict(tokenizer_identity) if tokenizer_identity else None

    def prepare_data(self) -> None:
        if self.hparams.demo is not None:
            from metis.data.demo import DemoConfig, build_demo

            summary = build_demo(DemoConfig(**self.hparams.demo))
            print(f"demo corpus: {summary['hours']:.2f} h, {summary['samples']} samples, "
                  f"{summary['speakers']} speakers in {summary['out_dir']}", flush=True)

    def setup(self, stage: str | None = None) -> None:
        if self.hparams.demo is not None:
            summary = json.loads((Path(self.hparams.demo["out_dir"]) / "demo.json").read_text())
            key = f"{self.hparams.demo_split}_shards"
            if not summary.get(key):
                raise ValueError(f"data.demo_split={self.hparams.demo_split!r}: the demo corpus has no {key} "
                                 f"(splits: {sorted(summary['samples'])})")
            self.train_shards = self.train_shards or summary[key]
            self.val_shards = self.val_shards or summary["val_shards"]
            self.tokenizer_identity = self.tokenizer_identity or summary["tokenizer_identity"]
        if not self.train_shards:
            raise ValueError("data.train_shards is empty: point it at your shards, e.g. data.train_shards='/data/emilia/{000000..000999}.tar'")
        if self.hparams.max_train_shards:
            shards = expand_shards(self.train_shards)
            n = int(self.hparams.max_train_shards)
            if n > len(shards):
                raise ValueError(f"data.max_train_shards={n} but {self.train_shards} has only {len(shards)} shards")
            self.train_shards = sorted(shards)[:n]

    def train_size(self) -> int:
        """Utterances in the training shards (local shards; the tokenizer member not counted)."""
        import tarfile

        keys = set()
        for url in expand_shards(self.train_shards):
            with tarfile.open(url) as tar:
                for m in tar:
                    key = m.name.split("/")[-1].split(".")[0]
                    if key != TOKENIZER_MEMBER:
                        keys.add((url, key))
        return len(keys)

    def _loader(self, shards, mode: str, seed: int):
        h = self.hparams
        trainer = self.trainer
        packed = h.packed
        if packed is None:
            net = getattr(getattr(trainer, "lightning_module", None), "net", None) if trainer is not None else None
            packed = isinstance(net, torch.nn.Module) and any(isinstance(m, LlamaNAR) for m in net.modules()) \
                and estimator_of(net).packing != "off"  # codec trainers have no estimator: padded budget
        return build_loader(
            shards, mode=mode, max_tokens=h.max_tokens if mode == "train" else (h.val_max_tokens or h.max_tokens),
            fields=tuple(h.fields), num_workers=h.num_workers if mode == "train" else h.val_num_workers,
            seed=seed, tokenizer_identity=self.tokenizer_identity, min_dur=h.min_dur, max_dur=h.max_dur,
            min_std=h.min_std, max_clipped_fraction=h.max_clipped_fraction,
            shuffle_buffer=h.shuffle_buffer, max_batch_size=h.max_batch_size, batch_stage=self.condition_stage,
            packed=packed,
            rank=trainer.global_rank if trainer else None, world_size=trainer.world_size if trainer else None)

    def train_dataloader(self):
        loader = self._loader(self.train_shards, "train", int(self.hparams.seed))
        saved = self._saved_stream
        if saved:
            rank = self.trainer.global_rank if self.trainer else 0
            ranks = saved["ranks"]
            why = (f"world_size {len(ranks)} -> {self.trainer.world_size if self.trainer else 1}"
                   if len(ranks) != (self.trainer.world_size if self.trainer else 1) else loader.position_mismatch(ranks[rank]))
            if why is None:
                loader.resume_from(ranks[rank])
                rank_zero_info(f"data: the train stream continues exactly after batch {ranks[rank]['batches']} of each rank")
            else:
                loader = self._loader(self.train_shards, "train", self.stream_seed())
                rank_zero_warn(f"data: the saved train-stream position does not fit this run ({why}): the stream restarts "
                               f"re-seeded (seed {self.stream_seed()}), so from here the batches differ from an "
                               f"uninterrupted run's: the samples buffered at the checkpoint are not seen and samples of "
                               f"the current pass may come again (docs/distributed.md)")
        self._train_loader = loader
        return loader

    def val_dataloader(self):
        if not self.val_shards:
            return []
        # Finite per-rank streams differ in length: stop every rank when one runs dry (no hang).
        return EqualBatches(self._loader(self.val_shards, "val", int(self.hparams.seed)))

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Note how far the trainer is in the train stream (the batch's `stream_batch`, taken off)."""
        if isinstance(batch, dict) and "stream_batch" in batch:
            done = batch.pop("stream_batch")
            if self.trainer is None or self.trainer.training:
                self._consumed = int(done)
        return batch

    # ---- data position across resumes ------------------------------------------------------------
    # The checkpoint holds every rank's train-stream position after the last batch the trainer
    # consumed (`_consumed`), gathered from all ranks (every rank builds the checkpoint dict). When
    # that cannot be continued (another layout), each resume re-seeds the stream from (seed, resume
    # count) so it never replays the run's first batches.
    _resumes: int = 0
    _consumed: int = 0
    _train_loader = None
    _saved_stream: dict | None = None

    def stream_seed(self) -> int:
        """The re-seeded train stream's seed after the n-th resume that could not continue exactly."""
        if self._resumes == 0:
            return int(self.hparams.seed)
        return random.Random(f"{self.hparams.seed}/resume/{self._resumes}").getrandbits(31)

    def batches_consumed(self) -> int:
        """Training batches this rank has consumed (Lightning's counter, restored on resume)."""
        trainer = self.trainer
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed) if trainer is not None else 0

    def state_dict(self) -> dict:
        state = {"seed": int(self.hparams.seed), "resumes": self._resumes,
                 "batches_consumed_per_rank": self.batches_consumed()}
        local = self._train_loader.position(self._consumed) if self._train_loader is not None else None
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, local)  # a collective: every rank saves the checkpoint dict
        else:
            ranks = [local]
        if all(r is not None for r in ranks):
            state["stream"] = {"ranks": ranks}
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self._resumes = int(state["resumes"]) + 1
        self._saved_stream = state.get("stream")


class AudioCropDataModule(ShardDataModule):
    """Fixed-length waveform crops for codec training, from the same shards (flac/mp3/wav members).

    Batches are formed by the shard loader (whole utterances, token-budgeted, `max_batch_size` caps
    them), then each utterance is cropped to `segment_seconds` before the batch goes to the device:
    a random window in training, the first window in validation (the same audio at every evaluation).
    Utterances shorter than a crop are dropped by the loader (`min_dur` is raised to the crop).

    Batch: `wav` (b, 1, n) float32 at the field's rate, n = segment (a multiple of `multiple_of`).

    Args:
        audio_field: "wav24" (acoustic codec, 24 kHz) or "wav16" (semantic codec features, 16 kHz).
        segment_seconds: training crop; val_segment_seconds: validation crop (default: the same).
        multiple_of: crop lengths are rounded down to a multiple of this many samples (the codec hop).
        other arguments: as ShardDataModule.
    """

    def __init__(self, audio_field: str = "wav24", segment_seconds: float = 1.0, val_segment_seconds: float | None = None,
                 multiple_of: int = 480, min_dur: float = 0.5, **kwargs):
        from metis.data.loader import WAV_RATES

        if audio_field not in WAV_RATES:
            raise ValueError(f"audio_field={audio_field!r}: must be one of {sorted(WAV_RATES)}")
        val_seconds = segment_seconds if val_segment_seconds is None else val_segment_seconds
        super().__init__(fields=(audio_field,), min_dur=max(min_dur, segment_seconds, val_seconds), **kwargs)
        self.audio_field = audio_field
        rate = WAV_RATES[audio_field]
        self.crop = {"train": self._samples(segment_seconds * rate, multiple_of),
                     "val": self._samples(val_seconds * rate, multiple_of)}

    @staticmethod
    def _samples(n: float, multiple_of: int) -> int:
        out = int(n) // multiple_of * multiple_of
        if out < multiple_of:
            raise ValueError(f"a crop of {int(n)} samples is shorter than one hop ({multiple_of} samples)")
        return out

    def crops(self, wav: torch.Tensor, lens: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """wav (b, n_max) padded, lens (b,) -> (b, 1, n): random windows (generator) or the first n samples."""
        out = wav.new_zeros(wav.shape[0], 1, n)
        for i, length in enumerate(lens.tolist()):
            room = max(int(length) - n, 0)
            start = int(torch.randint(room + 1, (1,), generator=generator)) if generator is not None else 0
            seg = wav[i, start:start + min(n, int(length))]
            out[i, 0, : seg.numel()] = seg
        return out

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        field = self.audio_field
        if field not in batch:
            return batch
        training = self.trainer is not None and self.trainer.training
        generator = None
        if training:  # seeded by (seed, rank, batch count): a resumed run draws the uninterrupted run's crops
            rank = self.trainer.global_rank
            generator = torch.Generator().manual_seed(
                random.Random(f"{self.hparams.seed}/crop/{rank}/{self._consumed}").getrandbits(63))
        n = self.crop["train" if training else "val"]
        batch["wav"] = self.crops(batch[field], batch[f"{field}_lens"], n, generator)
        return batch
