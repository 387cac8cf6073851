"""Fast (single process) checks of the fault-tolerance pieces: non-finite losses skipped and counted,
consecutive ones stop the run, SIGTERM saves a checkpoint at the current step, a corrupt last
checkpoint is passed over, the resumable sampler."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from metis.lightning.fault_tolerance import (EqualBatches, NonFiniteGuard, NonFiniteLossError, ResumableSampler,
                                             checkpoint_is_loadable, newest_loadable)
from metis.lightning.training import resolve_ckpt_path, train
from tests.distributed.conftest import read_jsonl

NAN_MODULE = "model._target_=tests.distributed.helpers.NaNInjectingStage1"


def _with_probe(cfg, folder: Path, **extra_callbacks):
    with open_dict(cfg):
        cfg.callbacks.probe = {"_target_": "tests.distributed.helpers.Probe", "dirpath": str(folder)}
        for name, node in extra_callbacks.items():
            cfg.callbacks[name] = node
    return cfg


class _OneDevice:
    """The strategy surface NonFiniteGuard uses, for a single process."""

    @staticmethod
    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
        return decision


def test_guard_counts_and_stops_after_n_consecutive():
    guard = NonFiniteGuard(max_consecutive=3)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert guard.check(nan, _OneDevice, 1) and guard.check(torch.tensor(float("inf")), _OneDevice, 2)
    assert not guard.check(one, _OneDevice, 3)  # a finite loss resets the run of failures
    assert guard.consecutive == 0 and guard.skipped == 2
    guard.check(nan, _OneDevice, 4)
    guard.check(nan, _OneDevice, 5)
    with pytest.raises(NonFiniteLossError, match="3 consecutive training steps, the last at global step 6"):
        guard.check(nan, _OneDevice, 6)
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped == 5


def test_nan_step_is_skipped_counted_and_leaves_weights_unchanged(tiny_cfg, tmp_path):
    cfg = _with_probe(tiny_cfg(NAN_MODULE, "+model.nan_batches=[2,5]", "callbacks=none"), tmp_path / "probe")
    result = train(cfg)
    assert result["global_step"] == 8  # skipped steps still count as steps (the scheduler advances)
    assert result["metrics"]["train/nonfinite_skipped"] == 2.0
    records = read_jsonl(tmp_path / "probe" / "probe_rank0.jsonl")
    for rec in records:
        changed = rec["before"] != rec["after"]
        assert changed == (rec["batch_idx"] not in (2, 5)), rec
    assert [r["skipped"] for r in records] == [0, 0, 1, 1, 1, 2, 2, 2]


def test_nan_under_gradient_accumulation_drops_the_whole_window(tiny_cfg, tmp_path):
    # micro-batches 0..7 form windows {0,1} {2,3} {4,5} {6,7}; a NaN at micro-batch 2 drops window {2,3}
    cfg = _with_probe(tiny_cfg(NAN_MODULE, "+model.nan_batches=[2]", "callbacks=none", "trainer.max_steps=4",
                               "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=8"), tmp_path / "probe")
    result = train(cfg)
    assert result["global_step"] == 4 and result["metrics"]["train/nonfinite_skipped"] == 1.0
    records = {r["batch_idx"]: r for r in read_jsonl(tmp_path / "probe" / "probe_rank0.jsonl")}
    # weights change only at the end of a window (odd micro-batch), and not at all for the dropped one
    assert records[2]["before"] == records[3]["after"]
    assert records[1]["before"] != records[1]["after"] and records[5]["before"] != records[5]["after"]


def test_consecutive_nonfinite_losses_stop_the_run_naming_the_step(tiny_cfg):
    cfg = tiny_cfg(NAN_MODULE, "+model.nan_batches=[3,4,5,6]", "+model.max_consecutive_nonfinite=3", "callbacks=none")
    with pytest.raises(NonFiniteLossError, match="the last at global step 5"):
        train(cfg)


def test_sigterm_saves_last_checkpoint_at_the_current_step_and_exits_cleanly(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.max_steps=50", "callbacks.model_checkpoint.every_n_train_steps=100")
    with open_dict(cfg):
        cfg.callbacks.kill = {"_target_": "tests.distributed.helpers.SignalAtStep", "step": 6, "signum": int(signal.SIGTERM)}
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exc:
            train(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exc.value.code in (None, 0)  # exit status 0
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    resumed = train(tiny_cfg("trainer.max_steps=9", "ckpt_path=last", "callbacks.model_checkpoint.every_n_train_steps=100"))
    assert resumed["global_step"] == 9


def test_truncated_last_checkpoint_falls_back_to_the_newest_loadable(tiny_cfg):
    first = train(tiny_cfg("callbacks.model_checkpoint.every_n_train_steps=4"))
    folder = Path(first["checkpoint_dir"])
    last, step8, step4 = folder / "last.ckpt", folder / "step00000008.ckpt", folder / "step00000004.ckpt"
    assert all(checkpoint_is_loadable(p) for p in (last, step8, step4))
    for p in (last, step8):  # killed while writing: half a file
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    assert not checkpoint_is_loadable(last)
    assert newest_loadable(folder) == step4
    assert resolve_ckpt_path("last", folder) == str(step4)
    assert resolve_ckpt_path("auto", folder) == str(step4)
    resumed = train(tiny_cfg("trainer.max_steps=10", "ckpt_path=last"))
    assert resumed["global_step"] == 10
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 10  # rewritten, complete

    for p in folder.glob("*.ckpt"):
        p.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FileNotFoundError, match="no checkpoint .* is complete"):
        resolve_ckpt_path("last", folder)


def test_deepspeed_folder_loadability(tmp_path):
    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    assert not checkpoint_is_loadable(folder)  # no shards yet
    torch.save({"module": {}}, folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert checkpoint_is_loadable(folder)
    shard = folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:40])
    assert not checkpoint_is_loadable(folder)


def test_resumable_sampler_is_disjoint_over_ranks_and_resumes_mid_epoch():
    shares = [list(ResumableSampler(50, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 16 for s in shares)
    assert not set(shares[0]) & set(shares[1]) and not set(shares[1]) & set(shares[2])
    s = ResumableSampler(50, seed=3, rank=1, world_size=3)
    s.set_epoch(2)
    full = list(s)
    assert full != shares[1]  # a new permutation per epoch
    s.resume_at(2, 5)
    assert list(s) == full[5:]
    assert list(s) == full  # only the first pass after resuming is shortened
    assert list(EqualBatches([1, 2, 3])) == [1, 2, 3]  # no process group: the loader itself


def test_data_position_resumes_exactly(tiny_cfg, tmp_path):
    """Resume mid-epoch: the batches after the checkpoint are those of the uninterrupted run."""
    straight = _with_probe(tiny_cfg("trainer.max_steps=12", "callbacks.model_checkpoint.every_n_train_steps=5",
                                    "run_name=straight"), tmp_path / "straight")
    train(straight)
    stopped = train(tiny_cfg("trainer.max_steps=5", "callbacks.model_checkpoint.every_n_train_steps=5", "run_name=resumed"))
    assert stopped["global_step"] == 5
    resumed = _with_probe(tiny_cfg("trainer.max_steps=12", "ckpt_path=last", "run_name=resumed"), tmp_path / "resumed")
    train(resumed)
    want = [r for r in read_jsonl(tmp_path / "straight" / "probe_rank0.jsonl") if r["step"] > 5]
    got = read_jsonl(tmp_path / "resumed" / "probe_rank0.jsonl")
    assert [r["ids"] for r in got] == [r["ids"] for r in want]
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5, abs=1e-6), (g["step"], g["loss"], w["loss"])


def _shard_cfg(tiny_cfg, shards, workers, *extra):
    from tests.distributed.helpers import shard_overrides

    given = {o.split("=")[0] for o in extra}
    return tiny_cfg(*[o for o in shard_overrides(shards, workers) if o.split("=")[0] not in given], *extra)


@pytest.fixture
def token_shards(tmp_path):
    from tests.distributed.helpers import write_token_shards

    return write_token_shards(tmp_path / "shards", n_shards=3, per_shard=12)


def test_shard_stream_resumes_exactly_in_process(tiny_cfg, tmp_path, token_shards):
    """A shard-fed run stopped at step 5 and resumed sees the uninterrupted run's batches and losses."""
    from safetensors.torch import load_file

    common = ["trainer.max_steps=12", "callbacks.model_checkpoint.every_n_train_steps=5"]
    straight = _with_probe(_shard_cfg(tiny_cfg, token_shards, 0, *common, "run_name=straight"), tmp_path / "straight")
    done = train(straight)
    train(_shard_cfg(tiny_cfg, token_shards, 0, "trainer.max_steps=5", "callbacks.model_checkpoint.every_n_train_steps=5",
                     "run_name=resumed"))
    state = torch.load(Path(straight.paths.root_dir) / "outputs" / "resumed" / "checkpoints" / "last.ckpt",
                       map_location="cpu", weights_only=True)["ShardDataModule"]
    assert state["stream"]["ranks"][0]["batches"] == 5
    resumed = _with_probe(_shard_cfg(tiny_cfg, token_shards, 0, *common, "ckpt_path=last", "run_name=resumed"),
                          tmp_path / "resumed")
    again = train(resumed)
    want = [r for r in read_jsonl(tmp_path / "straight" / "probe_rank0.jsonl") if r["step"] > 5]
    got = read_jsonl(tmp_path / "resumed" / "probe_rank0.jsonl")
    assert [r["ids"] for r in got] == [r["ids"] for r in want] and len(got) == 7
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit-identical
    a, b = load_file(done["exported"]), load_file(again["exported"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shard_resume_with_another_worker_count_continues_reseeded_and_says_so(tiny_cfg, token_shards, caplog):
    train(_shard_cfg(tiny_cfg, token_shards, 0, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=4"))
    with pytest.warns(UserWarning, match=r"does not fit this run \(num_workers 0 -> 1\): the stream restarts re-seeded"):
        result = train(_shard_cfg(tiny_cfg, token_shards, 1, "trainer.max_steps=7", "ckpt_path=last"))
    assert result["global_step"] == 7


def test_shard_stream_reseed_after_unfitting_resumes_and_val_is_equalised(monkeypatch):
    import metis.lightning.datamodule as dm_mod

    class FakeLoader(list):
        def __init__(self, mode, seed):
            super().__init__([mode])
            self.seed = seed

        def position(self, consumed):
            return {"seed": self.seed, "batches": consumed}

        def position_mismatch(self, state):
            return "num_workers 2 -> 1"

    seeds = []
    monkeypatch.setattr(dm_mod, "build_loader", lambda shards, **kw: seeds.append((kw["mode"], kw["seed"])) or FakeLoader(kw["mode"], kw["seed"]))
    dm = dm_mod.ShardDataModule(train_shards="a.tar", val_shards="b.tar", seed=7)
    dm.train_dataloader()
    assert isinstance(dm.val_dataloader(), EqualBatches)
    state = dm.state_dict()
    assert state == {"seed": 7, "resumes": 0, "batches_consumed_per_rank": 0, "stream": {"ranks": [{"seed": 7, "batches": 0}]}}
    again = dm_mod.ShardDataModule(train_shards="a.tar", val_shards="b.tar", seed=7)
    again.load_state_dict(state)
    with pytest.warns(UserWarning, match="num_workers 2 -> 1"):
        again.train_dataloader()
    third = dm_mod.ShardDataModule(train_shards="a.tar", seed=7)
    third.load_state_dict(again.state_dict())
    with pytest.warns(UserWarning):
        third.train_dataloader()
    train_seeds = [s for mode, s in seeds if mode == "train" ]
    # fresh: 7; each unfitting resume builds the loader, then rebuilds it re-seeded: a new order each time
    assert train_seeds[0] == 7 and len(set(train_seeds[2::2] + train_seeds[:1])) == 3
    assert [s for mode, s in seeds if mode == "val"] == [7]  # validation stays deterministic
    assert third.stream_seed() == third.stream_seed()  # reproducible

