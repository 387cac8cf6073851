"""Files from elsewhere: nothing is ever unpickled without `--trust-pickle`, and every file that is
not the safetensors it should be is refused with its name and what is wrong with it."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from metis.checkpoints import published
from metis.checkpoints.io import CheckpointFormatError, CheckpointMismatchError, load_into, read_safetensors, save_safetensors
from metis.models.metis_stage1 import MetisStage1

TINY = dict(hidden_size=16, num_layers=2, num_heads=2, cond_codebook_size=8, cond_dim=4)


class Payload:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, tensors: dict | None = None) -> Path:
    torch.save({"model": dict(tensors or {"w": torch.zeros(2)}), "config": Payload(marker)}, path)
    return path


def test_unispeech_pth_with_a_payload_is_refused_and_the_payload_never_runs(tmp_path):
    from metis.eval.metrics.similarity import WavLMSim
    from metis.eval.metrics.base import MetricUnavailable
    from metis.eval.metrics.wavlm_tdnn import WavLMTDNN

    marker = tmp_path / "pwned"
    pth = plant(tmp_path / "wavlm_large_finetune.pth", marker)
    with pytest.raises(ValueError, match=r"wavlm_large_finetune.pth pickles Python objects .* --trust-pickle"):
        WavLMTDNN.from_unispeech(pth)
    with pytest.raises(MetricUnavailable, match="--trust-pickle"):
        WavLMSim(pth)._load()
    assert not marker.exists()


def test_trust_pickle_converts_once_then_the_metric_reads_safetensors(tmp_path):
    from metis.checkpoints.convert import main as convert_main
    from metis.eval.metrics.wavlm_tdnn import unispeech_state_dict

    marker = tmp_path / "ran"
    pth = plant(tmp_path / "wavlm.pth", marker, {"linear.weight": torch.arange(6.0).reshape(2, 3)})
    assert convert_main([str(pth), str(tmp_path / "out")]) == 2  # a plain convert refuses it (weights-only load)
    assert not marker.exists()
    assert convert_main([str(pth), str(tmp_path / "out"), "--trust-pickle"]) == 0
    assert marker.exists()  # the explicit, one-time unpickling the user asked for
    marker.unlink()
    sd = unispeech_state_dict(tmp_path / "out" / "wavlm.safetensors")
    assert torch.equal(sd["linear.weight"], torch.arange(6.0).reshape(2, 3)) and not marker.exists()


def test_deepspeed_folder_with_a_payload_is_not_executed(tmp_path):
    pytest.importorskip("deepspeed")
    from metis.checkpoints.deepspeed import consolidate_zero_checkpoint

    marker = tmp_path / "pwned"
    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    torch.save({"module": {}, "buffer_names": [], "param_shapes": [{}], "evil": Payload(marker)},
               folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1, "evil": Payload(marker)}},
               folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        consolidate_zero_checkpoint(folder)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after the consolidation


# ------------------------------------------------------------------------ not-safetensors files

def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say), each at the path the loader reads."""
    data = good.read_bytes()
    out = {}
    for name, content, says in [
        ("empty", b"", "is empty"),
        ("truncated", data[: len(data) // 2], "truncated"),
        ("header_only", data[:5], "truncated"),
        ("pickle", b"\x80\x04\x95" + b"\x00" * 64, "is a pickle file"),
        ("garbage", b"{not json at all}" * 8, "not safetensors|not a valid safetensors"),
    ]:
        d = tmp_path / name
        d.mkdir()
        (d / good.name).write_bytes(content)
        out[name] = (d / good.name, says)
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpt_dir / good.name)
    out["lightning_ckpt"] = (ckpt_dir / good.name, "torch.save zip archive .* metis.checkpoints.convert")
    return out


def test_every_safetensors_reader_names_the_file_and_the_problem(tmp_path):
    from metis.checkpoints.lora import load_split
    from metis.inference.loading import load_export
    from metis.lightning.finetune_module import load_init

    torch.manual_seed(0)
    model = MetisStage1(**TINY)
    good = published.save(model, "metis_base", tmp_path / "good" / "model.safetensors")
    (tmp_path / "good" / "config.json").write_text(json.dumps(TINY))
    cases = _bad_files(tmp_path, good)
    readers = {
        "published.load": lambda p: published.load("metis_base", p, **TINY),
        "load_export": lambda p: (shutil.copy(tmp_path / "good" / "config.json", p.parent / "config.json"),
                                  load_export(p.parent, "stage1")),
        "finetune init=": lambda p: load_init(MetisStage1(**TINY), p),
        "lora.load_split": lambda p: load_split(p, p, p, {**TINY, "ft_type": "se"}, r=2),
    }
    tried = 0
    for reader, call in readers.items():
        for name, (path, says) in cases.items():
            with pytest.raises(CheckpointFormatError) as exc:
                call(path)
            msg = str(exc.value)
            assert str(path) in msg and len(msg.splitlines()) == 1, (reader, name, msg)
            assert re.search(says, msg), (reader, name, msg)
            tried += 1
    assert tried == len(readers) * len(cases) == 24
    assert read_safetensors(good).keys() == model.state_dict().keys()  # the good one still loads
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_safetensors(tmp_path / "nope.safetensors")


def test_dtype_other_than_the_model_is_named(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    half = {k: v.half() for k, v in model.state_dict().items()}
    path = save_safetensors(half, tmp_path / "half.safetensors")
    with pytest.warns(UserWarning, match=r"half.safetensors: 2 tensor\(s\) stored in another precision.*weight \(float16 vs model float32\)"):
        load_into(torch.nn.Linear(3, 2), read_safetensors(path), source=str(path))
    ints = {k: v.to(torch.int32) for k, v in model.state_dict().items()}
    path = save_safetensors(ints, tmp_path / "ints.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)ints.safetensors.*another dtype kind.*bias \(int32 vs model float32\)"):
        load_into(torch.nn.Linear(3, 2), read_safetensors(path), source=str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same dtype: silent
        load_into(torch.nn.Linear(3, 2), model.state_dict(), source="same")
