"""DeepSpeed ZeRO-2 and ZeRO-3 through Lightning and `train.py` on 1 and 2 CPU processes (gloo), with
the TEST-ONLY CPUDeepSpeedStrategy (conftest.py): fit, NaN step discarded, checkpoint folders,
resume with ckpt_path=last, export (gathered fp32 master weights) == converted checkpoint, and a
LoRA run whose checkpoints hold only the trainable tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metis.checkpoints.convert import main as convert_main
from metis.lightning.fault_tolerance import checkpoint_is_loadable
from tests.distributed.conftest import deepspeed_overrides, read_jsonl, run_train

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage,devices", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_zero_fit_nan_checkpoint_resume_convert(stage, devices, tmp_path, capsys):
    probe = tmp_path / "probe"
    common = [*deepspeed_overrides(stage, devices), "trainer.val_check_interval=2", "trainer.limit_val_batches=2",
              "callbacks.model_checkpoint.every_n_train_steps=2",
              "model._target_=tests.distributed.helpers.NaNInjectingStage1", "+model.nan_batches=[1]"]
    run_train(tmp_path, "ds", *common, "trainer.max_steps=4", "+callbacks.probe._target_=tests.distributed.helpers.Probe",
              f"+callbacks.probe.dirpath={probe}", timeout=900)
    ranks = [read_jsonl(probe / f"probe_rank{r}.jsonl") for r in range(devices)]
    for records in ranks:
        assert [r["before"] == r["after"] for r in records] == [False, True, False, False]  # NaN step discarded
        assert records[-1]["skipped"] == 1
        assert [r["after"] for r in records] == [r["after"] for r in ranks[0]]  # same weights on every rank

    ckpts = tmp_path / "outputs" / "ds" / "checkpoints"
    last = ckpts / "last.ckpt"
    assert last.is_dir() and checkpoint_is_loadable(last) and checkpoint_is_loadable(ckpts / "step00000004.ckpt")
    shards = sorted(p.name for p in (last / "checkpoint").glob("*optim_states.pt"))
    assert len(shards) == devices  # one optimizer shard per rank

    # Converted checkpoint == the export written at the end of the run (fp32 master weights) == the net's keys.
    out = tmp_path / "converted"
    assert convert_main([str(last), str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["global_step"] == "4"
    converted = load_file(out / "model.safetensors")
    exported = load_file(tmp_path / "outputs" / "ds" / "export" / "model.safetensors")
    assert converted.keys() == exported.keys() and len(converted) > 10
    for k in converted:
        assert torch.equal(converted[k], exported[k]), k
    assert (out / "config.json").is_file()  # copied from the run's export folder

    # Resume: continues at step 4 with the sharded optimizer state, reaches 6.
    run_train(tmp_path, "ds", *common, "trainer.max_steps=6", "ckpt_path=last",
              "+callbacks.probe._target_=tests.distributed.helpers.Probe", f"+callbacks.probe.dirpath={tmp_path / 'probe2'}",
              timeout=900)
    resumed = read_jsonl(tmp_path / "probe2" / "probe_rank0.jsonl")
    assert [r["step"] for r in resumed] == [5, 6]
    assert resumed[0]["before"] == ranks[0][-1]["after"]  # resumed weights == weights at the checkpoint
    assert convert_main([str(ckpts / "last.ckpt"), str(tmp_path / "converted6")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["global_step"] == "6"


def test_zero2_lora_checkpoints_hold_only_trainable_tensors(tmp_path, capsys):
    common = [*deepspeed_overrides(2, 1), "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
              "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.export=null",
              "model._target_=tests.distributed.helpers.LoRAStage1", "+model.lora_r=4",
              "+callbacks.trainable_only._target_=metis.lightning.strategies.TrainableOnlyCheckpoints"]
    run_train(tmp_path, "lora", *common, "trainer.max_steps=4", timeout=900)
    last = tmp_path / "outputs" / "lora" / "checkpoints" / "last.ckpt"
    states = torch.load(last / "checkpoint" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    keys = list(states["module"])
    assert keys and all(".lora_" in k for k in keys), [k for k in keys if ".lora_" not in k][:5]
    optim = torch.load(next((last / "checkpoint").glob("*optim_states.pt")), map_location="cpu", weights_only=False)
    n_trainable = sum(states["module"][k].numel() for k in keys)
    flat = optim["optimizer_state_dict"]["single_partition_of_fp32_groups"]
    assert sum(t.numel() for t in flat) == n_trainable  # optimizer state: trainable tensors only

    run_train(tmp_path, "lora", *common, "trainer.max_steps=6", "ckpt_path=last", timeout=900)
    out = tmp_path / "lora_file"
    assert convert_main([str(last), str(out), "--kind", "metis_se_lora"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["global_step"] == "6" and report["kind"] == "metis_se_lora"
    lora = load_file(out / "model.safetensors")
    assert lora.keys() == {k.removeprefix("net.") for k in keys}
    # A plain-model kind is refused with the missing (frozen) keys named.
    assert convert_main([str(last), str(tmp_path / "bad"), "--kind", "metis_base"]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize("stage", [2, 3])
def test_offload_presets_fit_resume_and_convert(stage, tmp_path, capsys):
    """trainer=deepspeed_stage_N_offload: the module's AdamW becomes DeepSpeedCPUAdam (ZeRO-Offload refuses
    torch optimizers); fit, resume, convert."""
    common = [*deepspeed_overrides(stage, 1, offload=True), "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
              "callbacks.model_checkpoint.every_n_train_steps=2"]
    first = run_train(tmp_path, "off", *common, "trainer.max_steps=4", timeout=900)
    assert "DeepSpeedCPUAdam" in first.stdout + first.stderr
    run_train(tmp_path, "off", *common, "trainer.max_steps=6", "ckpt_path=last", timeout=900)
    last = tmp_path / "outputs" / "off" / "checkpoints" / "last.ckpt"
    assert convert_main([str(last), str(tmp_path / "converted")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["global_step"] == "6"
