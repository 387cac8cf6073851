"""Learned non-intrusive MOS predictors.

- ``DistillMOS``: the ``distillmos`` package with the weights it ships (16 kHz).
- ``NISQA``: NISQA v2.0 from a user-supplied ``nisqa.tar`` (the model definition is torchmetrics'
  port of NISQA); scores at the clip's own rate, as NISQA does.
- ``UTMOS``: a user-supplied exported UTMOS model, either a ``torch.export`` program (``.pt2``) or a
  TorchScript file, taking a (1, time) 16 kHz waveform and returning the MOS.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from metis.audio import resample
from metis.eval.metrics.base import Metric, MetricUnavailable, require


class DistillMOS(Metric):
    name = "distillmos"
    description = "DistillMOS v7 (distillmos package weights), 16 kHz"

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None

    def check(self) -> None:
        require("distillmos", "distillmos --no-deps (plus xls-r-sqa --no-deps)")
        require("xls_r_sqa", "xls-r-sqa --no-deps")

    def _load(self):
        if self._model is None:
            import contextlib
            import io

            import distillmos

            with contextlib.redirect_stdout(io.StringIO()):  # it prints where it loaded weights from
                self._model = distillmos.ConvTransformerSQAModel().eval().to(self.device)
        return self._model

    @torch.inference_mode()
    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        x = torch.from_numpy(resample(wav, sr, 16000))[None].to(self.device)
        return {"distillmos": float(self._load()(x).squeeze())}


def _checkpoint(path: str | os.PathLike | None, metric: str, flag: str, what: str) -> Path:
    if not path:
        raise MetricUnavailable(f"{metric} needs a user-supplied checkpoint ({what}); pass {flag} PATH")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MetricUnavailable(f"{metric} checkpoint not found: {p} (from {flag})")
    return p


class NISQA(Metric):
    """NISQA v2.0 overall MOS plus its noisiness, discontinuity, colouration and loudness dimensions."""

    name = "nisqa"
    KEYS = ("nisqa", "nisqa_noi", "nisqa_dis", "nisqa_col", "nisqa_loud")

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu"):
        self.checkpoint = checkpoint
        self.device = device
        self.description = f"NISQA v2.0 ({checkpoint})"
        self._model = None

    def check(self) -> None:
        _checkpoint(self.checkpoint, "NISQA", "--nisqa-checkpoint", "nisqa.tar from the NISQA repository")
        require("librosa", "librosa")

    def _load(self):
        if self._model is None:
            from torchmetrics.functional.audio.nisqa import _NISQADIM

            path = _checkpoint(self.checkpoint, "NISQA", "--nisqa-checkpoint", "nisqa.tar")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(ckpt, dict) or "args" not in ckpt or "model_state_dict" not in ckpt:
                raise MetricUnavailable(f"{path} is not a NISQA checkpoint (needs 'args' and 'model_state_dict')")
            model = _NISQADIM(ckpt["args"])
            model.load_state_dict(ckpt["model_state_dict"], strict=True)
            self._model = (model.eval().to(self.device), ckpt["args"])
        return self._model

    @torch.inference_mode()
    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        from torchmetrics.functional.audio.nisqa import _get_librosa_melspec, _segment_specs

        model, args = self._load()
        x = np.asarray(wav, dtype=np.float32)[None]
        spec = _get_librosa_melspec(x, int(sr), args)
        segs, n_wins = _segment_specs(torch.from_numpy(spec), args)
        out = model(segs.to(self.device), n_wins.expand(segs.shape[0]).to(self.device))[0]
        return {k: float(v) for k, v in zip(self.KEYS, out, strict=True)}


class UTMOS(Metric):
    name = "utmos"

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu"):
        self.checkpoint = checkpoint
        self.device = device
        self.description = f"UTMOS ({checkpoint}), 16 kHz"
        self._model = None

    def check(self) -> None:
        _checkpoint(self.checkpoint, "UTMOS", "--utmos-checkpoint",
                    "an exported model: torch.export .pt2 or TorchScript, (1, time) 16 kHz wav -> MOS")

    def _load(self):
        if self._model is None:
            path = _checkpoint(self.checkpoint, "UTMOS", "--utmos-checkpoint", "exported model")
            try:
                if path.suffix == ".pt2":
                    model = torch.export.load(str(path)).module()
                else:
                    model = torch.jit.load(str(path), map_location="cpu")
                    model.eval()
            except Exception as e:
                raise MetricUnavailable(
                    f"cannot load UTMOS model {path}: {e} (expected a torch.export .pt2 or TorchScript file)"
                ) from e
            self._model = model.to(self.device)
        return self._model

    @torch.inference_mode()
    def score(self, wav, sr, *, reference=None, prompt=None, text=None, lang="en"):
        x = torch.from_numpy(resample(wav, sr, 16000))[None].to(self.device)
        out = self._load()(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return {"utmos": float(torch.as_tensor(out).reshape(-1)[0])}
