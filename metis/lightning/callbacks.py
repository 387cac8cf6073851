"""Callbacks: export the trained weights in the published safetensors layout."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info

from metis.atomic import write_json
from metis.checkpoints.deepspeed import gathered_state_dict
from metis.checkpoints.io import save_safetensors
from metis.tokenizers.acoustic import EXPORT_CONFIG


class ExportSafetensors(L.Callback):
    """Write `model.safetensors` (the net's state_dict, published key names) and `config.json`
    (the net's constructor config) at the end of training and, optionally, every N steps.

    The file loads strictly into the same class (`metis.checkpoints`) and into the reference code.
    Under DeepSpeed (any ZeRO stage) the fp32 master weights are gathered from all ranks first.
    Writes are atomic: an interrupted export leaves the previous file intact.

    Args:
        dirpath: folder for `model.safetensors` and `config.json`.
        every_n_train_steps: also export during training (0 = only at the end).
        model_config: the net's config (e.g. the Hydra `model.net` node), stored beside the weights.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0, model_config: dict | None = None):
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.model_config = model_config
        self.last_path: Path | None = None

    def export(self, trainer: L.Trainer, module: L.LightningModule) -> Path:
        path = self.dirpath / "model.safetensors"
        # Under DeepSpeed the module holds 16-bit copies (and ZeRO-3 only this rank's shard): gather the
        # fp32 master weights over all ranks (a collective, so every rank runs it).
        state = gathered_state_dict(module.net) if isinstance(trainer.strategy, DeepSpeedStrategy) else None
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            state = module.net.state_dict() if state is None else state
            meta = {"global_step": str(trainer.global_step), "metis.train_frames": str(getattr(module, "frames_seen", 0))}
            save_safetensors(state, path, metadata=meta)
            if self.model_config is not None:
                write_json(self.dirpath / "config.json", self.model_config)
            rank_zero_info(f"exported weights at step {trainer.global_step} to {path}")
        self.last_path = path
        return path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0:
            self.export(trainer, module)

    def on_fit_end(self, trainer, module) -> None:
        # After every on_train_end hook, so weight averaging (callbacks=ema) has copied its average in.
        self.export(trainer, module)


class ExportPublished(ExportSafetensors):
    """Export parts of the net as published files, in a folder laid out like the released repo.

    `files` maps a published kind (metis.checkpoints.published.KINDS) to the net's submodule holding
    it ("" = the whole net); e.g. the acoustic codec: {acoustic_encoder: encoder, acoustic_decoder:
    decoder} -> `acoustic_codec/model.safetensors` + `acoustic_codec/model_1.safetensors`. Each file's
    keys are checked against the published layout before the (atomic) write, so it loads strictly
    here and in the reference code. `codec_config.json` beside them holds the net's constructor config
    (the released sizes need none; smaller ones do). `last_path` is the folder.

    Args:
        dirpath: the export folder.
        files: kind -> submodule name.
        every_n_train_steps, model_config: as ExportSafetensors.
    """

    CONFIG = EXPORT_CONFIG  # AcousticTokenizer.from_export reads it

    def __init__(self, dirpath: str, files: dict[str, str], every_n_train_steps: int = 0, model_config: dict | None = None):
        super().__init__(dirpath, every_n_train_steps, model_config)
        from metis.checkpoints import published

        for kind in files:
            if published.kind_spec(kind).filename is None:
                raise ValueError(f"ExportPublished: kind {kind!r} has no published file name")
        self.files = dict(files)

    def export(self, trainer: L.Trainer, module: L.LightningModule) -> Path:
        from metis.checkpoints import published

        state = gathered_state_dict(module.net) if isinstance(trainer.strategy, DeepSpeedStrategy) else None
        if trainer.is_global_zero:
            state = module.net.state_dict() if state is None else state
            meta = {"global_step": str(trainer.global_step)}
            for kind, part in self.files.items():
                prefix = f"{part}." if part else ""
                sd = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                path = self.dirpath / published.kind_spec(kind).filename
                path.parent.mkdir(parents=True, exist_ok=True)
                published.save_state(sd, kind, path, meta, what=f"{type(module.net).__name__}.{part or 'net'}")
            if self.model_config is not None:
                write_json(self.dirpath / self.CONFIG, self.model_config)
            rank_zero_info(f"exported {', '.join(self.files)} at step {trainer.global_step} to {self.dirpath}")
        self.last_path = self.dirpath
        return self.dirpath
