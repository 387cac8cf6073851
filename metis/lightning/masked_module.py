"""Lightning modules for masked generative pre-training: Metis stage 1 (SSL tokens) and MaskGCT S2A
(acoustic tokens conditioned on SSL tokens).

The nets own the corruption (docs/reference.md §2.3, §3.3); these modules own the objective (cross-entropy
on masked, non-padding frames), optimisation, metrics and the bits of state a resumed run needs.

Batch keys (from `metis.data`): `sem` (b, t) int64 SSL tokens, `sem_mask` (b, t) 1 = valid; for S2A
also `ac` (b, t, 12) int64 acoustic tokens and `ac_mask`; without `sem`, raw `wav16` (b, n) and
`wav16_lens` (b,) are tokenized on the fly by the configured tokenizer.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch import nn

from metis.checkpoints.deepspeed import NET_CONFIG_KEY
from metis.lightning.baselines import MaskedBaselines
from metis.lightning.fault_tolerance import NonFiniteGuard
from metis.lightning.metrics import masked_token_loss
from metis.lightning.strategies import optimizer_for_strategy
from metis.lightning.throughput import per_token_matmul_params, training_flops
from metis.models.llama_nar import estimator_of


class MaskedGenerativeModule(L.LightningModule):
    """Shared optimisation, logging and RNG-state handling; subclasses implement `model_step` and may
    override `prepare_batch` (what a loader batch becomes before `model_step`: the fine-tune builds its
    task inputs there).

    Args:
        net: the masked generative model (MetisStage1 or MaskGCTS2A).
        optimizer: partial of a torch optimizer (called with the parameter groups).
        scheduler: partial of an LR scheduler (called with the optimizer), stepped every optimizer step.
        weight_decay_embeddings: also decay embedding tables (matrices are decayed; biases and scalars never).
        val_seed: validation corruption is seeded per batch so that val/loss is comparable across evaluations.
        tokenizer: frozen SpeechTokenizer used when batches carry raw audio instead of tokens.
        max_consecutive_nonfinite: a NaN/inf loss skips its step on every rank (counted as
            `train/nonfinite_skipped`); this many in a row stop the run naming the step (0: never).
        compile: regional `torch.compile` of the estimator (each decoder layer, `LlamaNAR.compile_layers`).
        fused_optimizer: on CUDA, torch Adam/AdamW run their fused single-kernel step (unless the
            optimizer config sets `fused` or `foreach` itself).
    """

    def __init__(self, net: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 weight_decay_embeddings: bool = False, val_seed: int = 1234, tokenizer: Any = None,
                 max_consecutive_nonfinite: int = 10, compile: bool = False, fused_optimizer: bool = True):
        super().__init__()
        # Only plain values go into the checkpoint's hparams: it must load with weights_only=True.
        self.save_hyperparameters(ignore=["net", "tokenizer", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.tokenizer = tokenizer
        self.val_history: list[float] = []
        self.val_records: list[dict] = []  # per validation: step, training frames so far, the val/* metrics
        self.frames_seen = 0  # valid training frames processed (all ranks), kept across resumes
        self.step_work: dict | None = None  # what the last training step did, for TrainThroughput
        self._flop_shape: tuple[int, int, int] | None = None
        self.nonfinite_guard = NonFiniteGuard(max_consecutive_nonfinite)
        # trivial predictors scored on the validation masks (stage-1 token models; unigram counted in training)
        codebook = getattr(net, "cond_codebook_size", None)
        self.baselines = MaskedBaselines(codebook) if codebook else None
        # The net's constructor config (the Hydra `model.net` node, set by the recipe): saved in every
        # checkpoint so that `metis.checkpoints.convert` can write a loadable export from it alone.
        self.net_config: dict | None = None

    # ---- one step, shared by train and val -------------------------------------------------
    def prepare_batch(self, batch: dict, split: str) -> Any:
        """The loader batch as `model_step` takes it (split: "train" or "val"); the batch itself here."""
        return batch

    def model_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (loss, stats); stats carry `n_valid` (real frames) and `seq_lens` ((b,) tokens each
        utterance puts through the estimator, prefix included), which are not logged."""
        raise NotImplementedError  # the subclasses (pre-training below, FinetuneModule) implement it

    def step_flops(self, seq_lens: torch.Tensor) -> int:
        """Model FLOPs of a training step over utterances of `seq_lens` tokens (`metis.lightning.throughput`)."""
        if self._flop_shape is None:
            est = estimator_of(self.net)
            self._flop_shape = (per_token_matmul_params(self.net), len(est.layers), est.hidden_size)
        return training_flops(*self._flop_shape, seq_lens.detach().cpu())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        guard = self.nonfinite_guard
        loss, stats = self.model_step(self.prepare_batch(batch, "train"))
        n_valid, seq_lens = stats.pop("n_valid"), stats.pop("seq_lens")
        self.step_work = {"samples": len(seq_lens), "frames": int(n_valid), "flops": self.step_flops(seq_lens)}
        log = dict(on_step=True, on_epoch=False, batch_size=int(stats["n_masked"].clamp(min=1)))
        if guard.check(loss, self.trainer.strategy, self.trainer.global_step):
            self.log("train/nonfinite_skipped", float(guard.skipped), **log)
            return guard.skip_output(loss)
        self.log("train/nonfinite_skipped", float(guard.skipped), **log)
        self.frames_seen += int(n_valid) * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, **log)
        for name, value in stats.items():
            self.log(f"train/{name}", value.float(), **log)
        if isinstance(batch, dict) and "padding_ratio" in batch:
            self.log("train/padding_ratio", float(torch.as_tensor(batch["padding_ratio"]).float().mean()), **log)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], **log)
        skips = getattr(self.trainer.train_dataloader, "skips", None)  # metis.data loaders count dropped samples
        if skips is not None:
            for reason, count in skips.totals.items():
                self.log(f"data/skipped_{reason}", float(count), **log)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.nonfinite_guard.drop_gradients(self)  # a NaN/inf loss in this window: no update

    def configure_model(self) -> None:
        if self.hparams.get("compile") and not getattr(self, "_compiled", False):
            estimator_of(self.net).compile_layers()
            self._compiled = True

    def on_fit_start(self) -> None:
        # The frozen tokenizer (on-the-fly tokenization) runs where the model runs.
        if self.tokenizer is not None and hasattr(self.tokenizer, "to"):
            self.tokenizer.to(self.device)

    @contextmanager
    def val_rng(self, batch_idx: int):
        """Same corruption on every evaluation: a forked RNG seeded per validation batch."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.hparams.val_seed + batch_idx)
            yield

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        prepared = self.prepare_batch(batch, "val")
        with self.val_rng(batch_idx):
            loss, stats = self.model_step(prepared)
        stats.pop("n_valid"), stats.pop("seq_lens")
        n = int(stats["n_masked"].clamp(min=1))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        for name, value in stats.items():
            if name != "n_masked":
                self.log(f"val/{name}", value.float(), sync_dist=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and "val/loss" in self.trainer.callback_metrics:
            metrics = self.trainer.callback_metrics
            self.val_history.append(float(metrics["val/loss"]))
            self.val_records.append({"step": int(self.trainer.global_step), "frames": int(self.frames_seen),
                                     **{k: float(v) for k, v in metrics.items() if k.startswith("val/") and v.numel() == 1}})

    # ---- tokens ------------------------------------------------------------------------------
    def semantic_tokens(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (b, t), mask (b, t)) from the batch, tokenizing raw 16 kHz audio if needed."""
        if "sem" in batch:
            return batch["sem"].long(), batch["sem_mask"].float()
        if self.tokenizer is None or "wav16" not in batch:
            raise KeyError(f"batch has no 'sem' tokens and no tokenizer/raw 'wav16' audio to make them (keys: {sorted(batch)})")
        wavs = [w[:n] for w, n in zip(batch["wav16"], batch["wav16_lens"].tolist())]
        with torch.no_grad():
            codes = self.tokenizer.encode(wavs)
        lens = torch.tensor([len(c) for c in codes], device=self.device)
        tokens = nn.utils.rnn.pad_sequence([c.to(self.device) for c in codes], batch_first=True)
        mask = (torch.arange(tokens.shape[1], device=self.device)[None] < lens[:, None]).float()
        return tokens.long(), mask

    # ---- optimisation --------------------------------------------------------------------------
    def lr_scale(self, name: str) -> float:
        """The multiple of the optimizer's lr that the net's parameter `name` trains at (1 here)."""
        return 1.0

    def configure_optimizers(self):
        factory, chosen = self.optimizer_factory, getattr(self.optimizer_factory, "keywords", {}) or {}
        groups: dict[tuple[bool, float], list] = {}
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            is_embedding = any(part.endswith("emb") for part in name.split("."))
            wants_decay = p.dim() >= 2 and (not is_embedding or self.hparams.weight_decay_embeddings)
            groups.setdefault((wants_decay, self.lr_scale(name)), []).append(p)
        lr = chosen.get("lr")
        groups = [{"params": params, **({} if decay else {"weight_decay": 0.0}),
                   **({} if scale == 1.0 or lr is None else {"lr": float(lr) * scale})}
                  for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
        fused = (self.hparams.get("fused_optimizer", True) and self.device.type == "cuda" and "fused" not in chosen
                 and "foreach" not in chosen and getattr(factory, "func", None) in (torch.optim.Adam, torch.optim.AdamW))
        optimizer = factory(params=groups, **({"fused": True} if fused else {}))
        optimizer = optimizer_for_strategy(optimizer, self._trainer)  # ZeRO-Offload needs DeepSpeed's CPU Adam
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ---- resumable randomness ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_state"] = capture_rng_state()
        checkpoint["nonfinite_guard"] = self.nonfinite_guard.state_dict()
        checkpoint["frames_seen"] = int(self.frames_seen)
        if self.baselines is not None:
            checkpoint["baselines"] = self.baselines.state_dict()
        if self.net_config is not None:
            checkpoint[NET_CONFIG_KEY] = self.net_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "nonfinite_guard" in checkpoint:
            self.nonfinite_guard.load_state_dict(checkpoint["nonfinite_guard"])
        self.frames_seen = int(checkpoint.get("frames_seen", 0))
        if self.baselines is not None and "baselines" in checkpoint:
            self.baselines.load_state_dict(checkpoint["baselines"])
        if self.net_config is None:
            self.net_config = checkpoint.get(NET_CONFIG_KEY)
        if checkpoint.get("rng_state") is not None:
            trainer = self._trainer
            restore_rng_state(checkpoint["rng_state"], trainer.global_rank if trainer is not None else 0,
                              trainer.world_size if trainer is not None else 1)


def capture_rng_state() -> dict:
    """torch, CUDA, numpy and Python RNG states, as values a weights_only checkpoint load accepts; under
    torch.distributed also every rank's (`ranks`; a collective: every rank builds the checkpoint dict)."""
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state as plain values + a tensor, so the checkpoint loads with weights_only=True
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": random.getstate(),
    }
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, state)
        state = {**state, "ranks": ranks}
    return state


def restore_rng_state(state: dict, rank: int = 0, world_size: int = 1) -> None:
    """Undo `capture_rng_state`: each rank gets its own saved state back (exact resume); with another
    world size, ranks > 0 derive their own stream from rank 0's."""
    ranks = state.get("ranks")
    exact = ranks is not None and len(ranks) == world_size
    if exact:
        state = ranks[rank]
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(state["python"])
    if rank > 0 and not exact:  # one saved state for all ranks: derive distinct, reproducible streams
        torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + rank)


def _numpy_state_to_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached


class Stage1PretrainModule(MaskedGenerativeModule):
    """Metis stage-1 pre-training on SSL tokens with no condition (docs/reference.md §2.3)."""

    def model_step(self, batch: dict):
        tokens, mask = self.semantic_tokens(batch)
        out = self.net(tokens, mask)
        loss, stats = masked_token_loss(out.logits, tokens, out.final_mask)
        stats["mask_ratio"] = out.mask_prob.float().mean()
        stats["n_valid"], stats["seq_lens"] = mask.sum(), mask.sum(1)
        if self.training:
            self.baselines.observe(tokens, mask)
        else:
            stats.update(self.baselines.score(tokens, out.final_mask, mask))
        return loss, stats


class S2APretrainModule(MaskedGenerativeModule):
    """MaskGCT S2A pre-training: acoustic tokens of one sampled layer, conditioned on SSL tokens (docs/reference.md §3.3).

    Semantic and acoustic streams differ by about one frame (docs/reference.md Q10); both are cut to their common length.
    Accuracy is also logged per trained layer (`train/acc_top1_layer{L}`).
    """

    def model_step(self, batch: dict):
        sem, sem_mask = self.semantic_tokens(batch)
        ac, ac_mask = batch["ac"].long(), batch["ac_mask"].float()
        n = min(sem.shape[1], ac.shape[1])
        nq = self.net.num_quantizer
        x0, cond = ac[:, :n, :nq], sem[:, :n]
        mask = ac_mask[:, :n] * sem_mask[:, :n]
        out = self.net(x0, mask, cond)
        layers = out.mask_layer.reshape(-1).expand(x0.shape[0])  # one layer per batch, or per utterance (packing="utterance")
        target = x0.gather(-1, layers.to(x0.device)[:, None, None].expand(-1, n, 1))[..., 0]
        loss, stats = masked_token_loss(out.logits, target, out.final_mask)
        present = layers.unique().tolist()
        for layer in present:  # one layer per batch (the reference) needs no second pass
            rows = (layers == layer).to(out.final_mask.device)[:, None, None]
            stats[f"acc_top1_layer{layer}"] = (stats["acc_top1"] if len(present) == 1 else
                                               masked_token_loss(out.logits.detach(), target, out.final_mask * rows)[1]["acc_top1"])
        stats["n_valid"], stats["seq_lens"] = mask.sum(), mask.sum(1)
        return loss, stats
