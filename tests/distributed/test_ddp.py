"""DDP on 2 CPU processes (gloo) through `train.py`: disjoint data per rank, identical weights, a NaN on
one rank skips the step on both, and uneven validation streams do not hang. Plus the SIGKILL and
SIGTERM cases of a real `train.py` process."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from metis.lightning.fault_tolerance import EqualBatches, ResumableSampler
from metis.lightning.synthetic_data import ProgressionTokens
from tests.distributed.conftest import REPO, read_jsonl, run_train, subprocess_env, train_cmd

pytestmark = pytest.mark.slow


def test_ddp_two_processes_disjoint_data_identical_weights_and_agreed_nan_skip(tmp_path):
    probe = tmp_path / "probe"
    run_train(tmp_path, "ddp", "+trainer.strategy=ddp", "trainer.devices=2", "trainer.max_steps=6",
              "trainer.val_check_interval=3", "trainer.limit_val_batches=1.0",
              # 17 validation samples in batches of 4: rank 0 gets 3 batches, rank 1 gets 2 (uneven)
              "data.n_val=17", "data.batch_size=4",
              "model._target_=tests.distributed.helpers.NaNInjectingStage1", "+model.nan_batches=[2]", "+model.nan_rank=1",
              f"+callbacks.probe._target_=tests.distributed.helpers.Probe", f"+callbacks.probe.dirpath={probe}",
              timeout=900)
    ranks = [read_jsonl(probe / f"probe_rank{r}.jsonl") for r in (0, 1)]
    assert [len(r) for r in ranks] == [6, 6]
    # Each rank read exactly its own share of the permutation (shares are disjoint by index; equal
    # synthetic sequences can occur at two indices, so compare with the expected items, in order).
    data = ProgressionTokens(512, 32, 16, 48, seed=0)
    for rank, records in enumerate(ranks):
        order = list(ResumableSampler(512, seed=0, rank=rank, world_size=2))
        want = [[int(data.lengths[i]), int(data.starts[i]), int((data.starts[i] + data.steps[i]) % 32)] for i in order[:24]]  # 6 batches of 4
        assert [ids for rec in records for ids in rec["ids"]] == want, f"rank {rank} did not read its own share"
    for step in range(6):
        a, b = ranks[0][step], ranks[1][step]
        assert a["after"] == b["after"], f"weights differ between ranks after batch {step}"
        assert (a["before"] == a["after"]) == (step == 2)  # only the NaN step (on rank 1 alone) is skipped, on both
    assert ranks[0][-1]["skipped"] == ranks[1][-1]["skipped"] == 1
    # (weights_only=False: the test module's extra hparams are a ListConfig)
    ckpt = torch.load(tmp_path / "outputs" / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6


def _uneven_worker(rank: int, world: int, port: int, out: Path) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    batches = list(EqualBatches(range(5 if rank == 0 else 2)))
    torch.distributed.all_reduce(torch.ones(1))  # would hang if the ranks had left the loop at different counts
    (out / f"rank{rank}").write_text(",".join(map(str, batches)))
    torch.distributed.destroy_process_group()


def test_equal_batches_stops_all_ranks_at_the_shortest_stream(tmp_path):
    mp.start_processes(_uneven_worker, args=(2, 29517, tmp_path), nprocs=2, start_method="spawn", join=True)
    assert (tmp_path / "rank0").read_text() == "0,1" and (tmp_path / "rank1").read_text() == "0,1"


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    common = ["trainer.max_steps=14", "callbacks.model_checkpoint.every_n_train_steps=4", "trainer.val_check_interval=7"]
    run_train(tmp_path, "straight", *common, "+callbacks.probe._target_=tests.distributed.helpers.Probe",
              f"+callbacks.probe.dirpath={tmp_path / 'straight_probe'}", "+callbacks.probe.digest=false")
    killed = run_train(tmp_path, "killed", *common, "+callbacks.kill._target_=tests.distributed.helpers.KillAtStep",
                       "+callbacks.kill.step=10", check=False)
    assert killed.returncode == -signal.SIGKILL
    ckpts = tmp_path / "outputs" / "killed" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 8  # lost 2 steps < 1 interval
    run_train(tmp_path, "killed", *common, "ckpt_path=last", "+callbacks.probe._target_=tests.distributed.helpers.Probe",
              f"+callbacks.probe.dirpath={tmp_path / 'resumed_probe'}", "+callbacks.probe.digest=false")
    want = {r["step"]: r for r in read_jsonl(tmp_path / "straight_probe" / "probe_rank0.jsonl")}
    got = read_jsonl(tmp_path / "resumed_probe" / "probe_rank0.jsonl")
    assert [r["step"] for r in got] == list(range(9, 15))
    for r in got:
        assert r["ids"] == want[r["step"]]["ids"], f"different batch at step {r['step']}"
        assert r["loss"] == pytest.approx(want[r["step"]]["loss"], rel=1e-5, abs=1e-6), r["step"]


def test_sigterm_from_outside_saves_a_checkpoint_and_exits_zero(tmp_path):
    marks = tmp_path / "marks"
    cmd = train_cmd(tmp_path, "term", "trainer.max_steps=100000", "callbacks.model_checkpoint.every_n_train_steps=100000",
                    "+callbacks.slow._target_=tests.distributed.helpers.SlowSteps", f"+callbacks.slow.dirpath={marks}",
                    "+callbacks.slow.seconds=0.2")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            mark = marks / "step_rank0"
            if mark.exists() and mark.read_text() and int(mark.read_text()) >= 5:
                break
            time.sleep(0.2)
        else:
            pytest.fail("train.py did not reach step 5")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    last = tmp_path / "outputs" / "term" / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert step >= 5 and f"SIGTERM: saved checkpoint at global step {step}" in out


@pytest.mark.parametrize("ddp", [False, True], ids=["2-workers", "2-ranks-2-workers"])
def test_sigkill_shard_fed_run_resumes_bit_identical(tmp_path, ddp):
    """A shard-fed run (2 DataLoader workers; then also 2 DDP ranks) SIGKILLed after step 6 resumes from
    its step-4 checkpoint to exactly the uninterrupted run: same batches, same losses, same exported weights."""
    from safetensors.torch import load_file

    from tests.distributed.helpers import shard_overrides, write_token_shards

    pattern = write_token_shards(tmp_path / "shards", n_shards=3, per_shard=12)
    common = [*shard_overrides(pattern, 2), "trainer.max_steps=9", "callbacks.model_checkpoint.every_n_train_steps=4"]
    if ddp:
        common += ["+trainer.strategy=ddp", "trainer.devices=2"]

    def probe(name):
        return ["+callbacks.probe._target_=tests.distributed.helpers.Probe", f"+callbacks.probe.dirpath={tmp_path / name}",
                "+callbacks.probe.digest=false"]

    run_train(tmp_path, "straight", *common, *probe("straight"), timeout=900)
    killed = run_train(tmp_path, "killed", *common, "+callbacks.kill._target_=tests.distributed.helpers.KillAtStep",
                       "+callbacks.kill.step=6", check=False, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = tmp_path / "outputs" / "killed" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    resumed = run_train(tmp_path, "killed", *common, "ckpt_path=last", *probe("resumed"), timeout=900)
    assert "the train stream continues exactly after batch 4" in resumed.stdout + resumed.stderr
    for rank in range(2 if ddp else 1):
        want = {r["step"]: r for r in read_jsonl(tmp_path / "straight" / f"probe_rank{rank}.jsonl")}
        got = read_jsonl(tmp_path / "resumed" / f"probe_rank{rank}.jsonl")
        assert [r["step"] for r in got] == list(range(5, 10))
        for r in got:
            assert r["ids"] == want[r["step"]]["ids"], f"rank {rank}: different batch at step {r['step']}"
            assert r["loss"] == want[r["step"]]["loss"], f"rank {rank}: loss differs at step {r['step']}"
    a = load_file(tmp_path / "outputs" / "straight" / "export" / "model.safetensors")
    b = load_file(tmp_path / "outputs" / "killed" / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
