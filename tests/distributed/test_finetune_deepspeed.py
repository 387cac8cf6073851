"""LoRA fine-tuning (the SE task on the synthetic speech of tests/finetune/) under DeepSpeed ZeRO-2/3
through `finetune.py` on CPU processes, with the TEST-ONLY CPUDeepSpeedStrategy (conftest.py): the
checkpoint folder holds only the trainable tensors and their optimizer state, `ckpt_path=last` resumes
at the saved step with the saved weights, the export reloads strictly (merged model and the published
split files) and gives the trained module's outputs, and ZeRO-3 exports the same files as ZeRO-2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from metis.checkpoints.io import load_into, save_safetensors
from metis.checkpoints.lora import load_split
from metis.models.metis_stage1 import MetisStage1
from tests.distributed.conftest import REPO, deepspeed_overrides, read_jsonl, subprocess_env
from tests.finetune.conftest import TINY, compose_finetune
from tests.finetune.synthetic_speech import fit_tokenizer

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

TINY_NET = dict(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=16, norm_init="unit")
R = 4
LORA = ("peft=lora", f"peft.r={R}")
SE = [*[o for o in TINY if not o.startswith("logger=")], "logger=none", "task=se", "data.n_train=2", "data.conditions.degrader.rirs=null", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
      "callbacks.model_checkpoint.every_n_train_steps=2", "num_threads=1"]
STEM = f"metis_se_lora_{R}"


class RecordOutputs(L.Callback):
    """TEST ONLY: at the end of training, the module's logits (eval mode, seeded) on the first validation
    batch and the model inputs they came from, saved by rank 0 to `path`. Every rank runs the forward
    (ZeRO-3 gathers each layer's parameters over the ranks)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_end(self, trainer, module):
        batch = next(iter(trainer.datamodule.val_dataloader()))
        inputs = module.prepare_batch(batch, "val")  # the conditions the loader simulated
        module.eval()
        torch.manual_seed(9)
        with torch.no_grad():
            logits = module(inputs).logits
        module.train()
        if trainer.is_global_zero:
            torch.save({"kwargs": inputs.model_kwargs(), "logits": logits.cpu()}, self.path)


def run_finetune(root: Path, run_name: str, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "finetune.py"), *SE, f"paths.root_dir={root}", f"run_name={run_name}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"finetune.py exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def fit(root: Path, run_name: str, stage: int, devices: int, steps: int, *extra: str, peft=LORA) -> Path:
    """An SE fine-tune (LoRA r=4 by default) of `steps` steps under ZeRO-`stage` with `devices` processes,
    Probe and RecordOutputs attached; returns its output folder."""
    out = root / "outputs" / run_name
    run_finetune(root, run_name, *peft, *deepspeed_overrides(stage, devices), f"trainer.max_steps={steps}",
                 f"init={root / 'base.safetensors'}",
                 "+callbacks.probe._target_=tests.distributed.helpers.Probe", f"+callbacks.probe.dirpath={out}/probe{steps}",
                 f"+callbacks.outputs._target_={__name__}.RecordOutputs", f"+callbacks.outputs.path={out}/outputs{steps}.pt",
                 *extra)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Base checkpoint, tokenizer and (below) runs shared by the tests of this file."""
    root = tmp_path_factory.mktemp("ft_ds")
    fit_tokenizer(root / "data" / "tok")
    torch.manual_seed(0)
    save_safetensors(MetisStage1(**TINY_NET).state_dict(), root / "base.safetensors")
    return root


@pytest.fixture(scope="module")
def zero2(root) -> Path:
    """ZeRO-2, 1 process: 4 steps (export copied to export4/), then resumed with ckpt_path=last to 6."""
    out = fit(root, "z2", 2, 1, 4, "ckpt_path=null")
    shutil.copytree(out / "export", out / "export4")
    shutil.copytree(out / "checkpoints" / "last.ckpt", out / "last4.ckpt")
    fit(root, "z2", 2, 1, 6, "ckpt_path=last")
    return out


def module_like_the_runs(root: Path):
    """The FinetuneModule the runs built (same config, same base), outside any strategy."""
    cfg = compose_finetune([*SE, *LORA, f"init={root / 'base.safetensors'}"], root=root)
    return instantiate(cfg.model)


def test_zero2_lora_checkpoint_holds_only_trainable_tensors(root, zero2):
    module = module_like_the_runs(root)
    states = torch.load(zero2 / "last4.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    keys = set(states["module"])
    assert keys == module.trainable_keys()  # LoRA A/B + the adapter; no frozen base weight
    assert not any("base_layer" in k or k.startswith("net.model.cond_emb") for k in keys)
    assert sum(v.numel() for v in states["module"].values()) == module.n_trainable < module.n_total // 2
    record = states["metis_finetune"]
    assert record == module.run_record() and record["r"] == R and record["base_sha256"] == module.base_sha256()
    optim = torch.load(next((zero2 / "last4.ckpt" / "checkpoint").glob("*optim_states.pt")), map_location="cpu",
                       weights_only=False)
    flat = optim["optimizer_state_dict"]["single_partition_of_fp32_groups"]
    assert sum(t.numel() for t in flat) == module.n_trainable  # optimizer state: trainable tensors only


def test_zero2_lora_resume_continues_at_the_saved_step(zero2):
    first = read_jsonl(zero2 / "probe4" / "probe_rank0.jsonl")
    resumed = read_jsonl(zero2 / "probe6" / "probe_rank0.jsonl")
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert [r["step"] for r in resumed] == [5, 6]
    assert resumed[0]["before"] == first[-1]["after"]  # every weight (frozen base + LoRA) as at the checkpoint
    assert resumed[0]["after"] != resumed[0]["before"]  # and training goes on
    assert json.loads((zero2 / "export" / "finetune.json").read_text())["global_step"] == 6


def _check_export(export: Path, outputs: Path, base: Path, lora: bool = True) -> None:
    """The merged model and (LoRA) the published split files reload strictly and give the module's logits."""
    recorded = torch.load(outputs, weights_only=False)
    kwargs, expected = recorded["kwargs"], recorded["logits"]
    config = json.loads((export / "config.json").read_text())
    net_kwargs = {k: v for k, v in config.items() if k != "_target_"}
    merged = load_into(MetisStage1(**net_kwargs), load_file(export / "model.safetensors"), source="model").eval()
    torch.manual_seed(9)
    with torch.no_grad():
        torch.testing.assert_close(merged(**kwargs).logits, expected, atol=1e-4, rtol=0)
    if not lora:
        assert not list(export.glob("metis_*.safetensors"))
        return
    split = load_split(base, export / f"{STEM}_adapter.safetensors", export / f"{STEM}.safetensors", net_kwargs, r=R).eval()
    torch.manual_seed(9)
    with torch.no_grad():
        torch.testing.assert_close(split(**kwargs).logits, expected, atol=1e-4, rtol=0)


def test_zero2_lora_export_reloads_strictly_with_the_module_outputs(root, zero2):
    _check_export(zero2 / "export4", zero2 / "outputs4.pt", root / "base.safetensors")
    _check_export(zero2 / "export", zero2 / "outputs6.pt", root / "base.safetensors")


def test_zero3_lora_export_matches_zero2(root, zero2):
    out = fit(root, "z3", 3, 1, 4, "ckpt_path=null")
    _check_export(out / "export", out / "outputs4.pt", root / "base.safetensors")
    for name in ("model.safetensors", f"{STEM}.safetensors", f"{STEM}_adapter.safetensors"):
        z3, z2 = load_file(out / "export" / name), load_file(zero2 / "export4" / name)
        assert z3.keys() == z2.keys() and z3, name
        for k in z2:
            torch.testing.assert_close(z3[k], z2[k], atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")
    states = torch.load(out / "checkpoints" / "last.ckpt" / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)
    assert states["metis_finetune"]["base_sha256"] == module_like_the_runs(root).base_sha256()  # hashed before partitioning


def test_zero2_two_processes_lora_fit_resume_export(root):
    out = fit(root, "z2x2", 2, 2, 4, "ckpt_path=null")
    ranks = [read_jsonl(out / "probe4" / f"probe_rank{r}.jsonl") for r in range(2)]
    assert [r["after"] for r in ranks[0]] == [r["after"] for r in ranks[1]]  # same weights on both ranks
    ckpt = out / "checkpoints" / "last.ckpt" / "checkpoint"
    assert len(list(ckpt.glob("*optim_states.pt"))) == 2  # one optimizer shard per rank
    states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert set(states["module"]) == module_like_the_runs(root).trainable_keys()
    fit(root, "z2x2", 2, 2, 6, "ckpt_path=last")
    for r in range(2):
        resumed = read_jsonl(out / "probe6" / f"probe_rank{r}.jsonl")
        assert [x["step"] for x in resumed] == [5, 6] and resumed[0]["before"] == ranks[r][-1]["after"]
    _check_export(out / "export", out / "outputs6.pt", root / "base.safetensors")


def test_zero2_full_finetune_resume_and_export(root):
    """Full fine-tune: nothing is frozen, so the checkpoint holds every weight (TrainableOnlyCheckpoints
    stays off); the DeepSpeed client state (no state_dict) resumes through the run-record checks."""
    out = fit(root, "full", 2, 1, 2, "ckpt_path=null", peft=("peft=full",))
    ckpt = out / "checkpoints" / "last.ckpt" / "checkpoint"
    states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert states["metis_finetune"]["method"] == "full"
    assert {k.removeprefix("net.") for k in states["module"]} == set(MetisStage1(ft_type="se", cond_dim=160, **TINY_NET).state_dict())
    fit(root, "full", 2, 1, 4, "ckpt_path=last", peft=("peft=full",))
    first, resumed = (read_jsonl(out / f"probe{n}" / "probe_rank0.jsonl") for n in (2, 4))
    assert [x["step"] for x in resumed] == [3, 4] and resumed[0]["before"] == first[-1]["after"]
    _check_export(out / "export", out / "outputs4.pt", root / "base.safetensors", lora=False)
