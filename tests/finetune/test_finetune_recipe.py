"""`finetune(cfg)` end to end on the composed config: LoRA checkpoints hold only the trainable tensors,
`ckpt_path=last` resumes exactly, a checkpoint of another base is refused, exports reload."""

import json

import pytest
import torch
from omegaconf import open_dict

from metis.checkpoints.io import save_safetensors
from metis.lightning.finetuning import finetune
from metis.models.metis_stage1 import MetisStage1

TINY_NET = dict(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=16, norm_init="unit")
SE = ["task=se", "peft=lora", "peft.r=4", "data.n_train=1", "data.conditions.degrader.rirs=null"]


def _base(path, seed=0):
    torch.manual_seed(seed)
    save_safetensors(MetisStage1(**TINY_NET).state_dict(), path)
    return path


def _trainables(module):
    return {n: p.detach().clone() for n, p in module.net.named_parameters() if p.requires_grad}


def test_lora_checkpoint_is_small_and_resumes_exactly(tiny_cfg, tmp_path):
    base = _base(tmp_path / "base.safetensors")
    straight = finetune(tiny_cfg(*SE, f"init={base}", "run_name=straight", "ckpt_path=null"))
    assert straight["global_step"] == 6
    ckpt = torch.load(straight["last_checkpoint"], weights_only=True)
    module = straight["module"]
    assert set(ckpt["state_dict"]) == module.trainable_keys()
    assert not any("base_layer" in k or k == "net.model.cond_emb.weight" for k in ckpt["state_dict"])
    record = ckpt["metis_finetune"]
    assert record["method"] == "lora" and record["r"] == 4 and record["base_sha256"] == module.base_sha256()
    trainable = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    assert sum(v.numel() for v in ckpt["state_dict"].values()) == trainable < module.n_total

    half = tiny_cfg(*SE, f"init={base}", "run_name=resumed", "ckpt_path=null", "trainer.max_steps=3")
    finetune(half)
    rest = tiny_cfg(*SE, f"init={base}", "run_name=resumed", "ckpt_path=last")
    resumed = finetune(rest)
    assert resumed["global_step"] == 6
    a, b = _trainables(straight["module"]), _trainables(resumed["module"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert set(straight["exported"]) == {"model", "lora", "adapter"}

    other = _base(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(ValueError, match="another base"):
        finetune(tiny_cfg(*SE, f"init={other}", "run_name=resumed", "ckpt_path=last", "trainer.max_steps=8"))


def test_compare_scratch_writes_the_comparison(tiny_cfg, tmp_path, capsys):
    base = _base(tmp_path / "base.safetensors")
    cfg = tiny_cfg(*SE, f"init={base}", "run_name=cmp", "ckpt_path=null", "compare_scratch=true", "trainer.max_steps=2",
                   "trainer.val_check_interval=1", "compare.steps_factor=3", "compare.patience=1")
    out = finetune(cfg)
    assert set(out["runs"]) == {"pretrained_lora", "pretrained_full", "scratch"}
    after = out["runs"]["pretrained_lora"]["after"]
    for key in ("val/baseline_unigram_acc_top1", "val/baseline_copy_nearest_acc_top1",
                "val/baseline_condition_acc_top1", "val/acc_top1_cond_shuffled", "val/acc_top1_cond_zero"):
        assert key in after, key
    assert out["runs"]["scratch"]["summary"].startswith("full fine-tune")
    assert out["runs"]["pretrained_full"]["summary"].startswith("full fine-tune")
    assert out["runs"]["pretrained_lora"]["summary"].startswith("LoRA r=4")
    doc = json.loads((tmp_path / "outputs" / "cmp" / "comparison.json").read_text())
    assert doc == out["comparison"]
    assert (tmp_path / "outputs" / "cmp" / "learning_curve.png").stat().st_size > 0
    assert set(doc["baselines"]) == {"unigram", "copy_nearest", "condition"}
    assert doc["seed"] == cfg.seed and set(doc["arms"]) == set(out["runs"])
    assert doc["selected_by"] == {"monitor": cfg.compare.monitor, "mode": cfg.compare.mode}
    for name, arm in doc["arms"].items():
        run = out["runs"][name]
        assert arm["init"] == ("scratch" if name == "scratch" else "pretrained")
        assert arm["peft"] == ("lora" if name == "pretrained_lora" else "full")
        assert arm["steps"] == run["global_step"]
        records = run["module"].val_records
        best = max(records, key=lambda r: r["val/acc_top1"])  # compare.monitor, the first on ties
        assert (arm["best_step"], arm["val_loss"], arm["val_acc_top1"]) == (best["step"], best["val/loss"], best["val/acc_top1"])
        assert arm["finetune_frames"] == best["frames"]
        lowest = min(records, key=lambda r: r["val/loss"])
        by_loss = arm["at_best_val_loss"]
        assert (by_loss["best_step"], by_loss["val_loss"], by_loss["val_acc_top1"]) == (lowest["step"], lowest["val/loss"], lowest["val/acc_top1"])
        assert "val_acc_top1_cond_shuffled" in arm
    for arm in doc["arms"].values():
        assert 2 <= arm["steps"] <= 6  # every arm at least the steps, up to 3x them, early-stopped
    assert doc["arms"]["scratch"]["total_frames"] == doc["arms"]["scratch"]["finetune_frames"]
    assert doc["arms"]["pretrained_lora"]["total_frames"] is None  # this base records no pre-training frames
    printed = capsys.readouterr().out
    assert out["table"] in printed and "baseline copy_nearest" in printed

def test_comparison_arms_take_their_optimizer_settings(tiny_cfg, tmp_path):
    from metis.lightning.comparison import arm_configs

    cfg = tiny_cfg(*SE, f"init={tmp_path / 'base.safetensors'}", "trainer.max_steps=5", "compare.steps_factor=3",
                   "compare.patience=2", "compare.full_lr=2e-3", "compare.full_warmup_steps=7",
                   "model.new_module_lr_scale=0.3")
    arms = arm_configs(cfg)
    lr, warmup = float(cfg.model.optimizer.lr), int(cfg.model.scheduler.warmup_steps)
    lora = arms["pretrained_lora"]
    assert (lora.model.optimizer.lr, lora.model.scheduler.warmup_steps, lora.model.new_module_lr_scale) == (lr, warmup, 0.3)
    assert arms["pretrained_full"].peft.method == "full" and arms["scratch"].init == "scratch"
    for name in ("pretrained_full", "scratch"):  # one recipe: only the init differs
        m = arms[name].model
        assert (m.optimizer.lr, m.scheduler.warmup_steps, m.new_module_lr_scale) == (2e-3, 7, 1.0), name
    for arm in arms.values():  # one budget, one selection
        stop = arm.callbacks.early_stopping
        assert (arm.trainer.min_steps, arm.trainer.max_steps, stop.patience) == (5, 15, 2)
        assert (stop.monitor, stop.mode) == (cfg.compare.monitor, cfg.compare.mode)


def test_comparison_arms_stop_early_after_their_minimum(tiny_cfg, tmp_path):
    """The copy-nearest baseline is the same at every validation (same masks), so monitored it never
    improves: with patience 1 every arm must stop at the first validation past trainer.max_steps."""
    base = _base(tmp_path / "base.safetensors")
    cfg = tiny_cfg(*SE, f"init={base}", "run_name=stop", "ckpt_path=null", "compare_scratch=true", "trainer.max_steps=2",
                   "trainer.val_check_interval=1", "compare.steps_factor=4", "compare.patience=1",
                   "compare.monitor=val/baseline_copy_nearest_acc_top1")
    out = finetune(cfg)
    assert {name: run["global_step"] for name, run in out["runs"].items()} == dict.fromkeys(out["runs"], 2)


def test_best_record_follows_the_monitor():
    from metis.lightning.comparison import best_record

    records = [{"step": 0, "val/loss": 4.0, "val/acc_top1": 0.20}, {"step": 40, "val/loss": 3.5, "val/acc_top1": 0.22},
               {"step": 80, "val/loss": 3.9, "val/acc_top1": 0.25}, {"step": 120, "val/loss": 4.2, "val/acc_top1": 0.25}]
    assert best_record(records)["step"] == 40
    assert best_record(records, "val/acc_top1", "max")["step"] == 80  # the first of the ties
    assert best_record(records, "val/acc_top10", "max") == {}


def test_comparison_mode_is_checked(tiny_cfg, tmp_path):
    from metis.lightning.comparison import arm_configs

    with pytest.raises(ValueError, match="compare.mode"):
        arm_configs(tiny_cfg(*SE, f"init={tmp_path / 'base.safetensors'}", "compare.mode=up"))


@pytest.mark.parametrize("batch_size", [1, 2])
def test_condition_ablations_score_the_frames_the_model_is_scored_on(tiny_cfg, tmp_path, batch_size):
    """Before fine-tuning the adapter is a no-op, so the model, its shuffled and its zero condition must
    score exactly alike, one-row validation batches included (they take another batch's condition)."""
    base = _base(tmp_path / "base.safetensors")
    out = finetune(tiny_cfg(*SE, f"init={base}", "run_name=ablate", "ckpt_path=null", "validate_before=true",
                            "trainer.max_steps=1", f"data.batch_size={batch_size}", "data.n_val=3",
                            "trainer.limit_val_batches=3"))
    before = out["module"].val_records[0]
    assert before["step"] == 0
    assert before["val/acc_top1_cond_shuffled"] == before["val/acc_top1"] == before["val/acc_top1_cond_zero"]


def test_comparison_sweep_shares_the_cores_between_its_jobs(monkeypatch):
    """Runs started together all see an idle machine, so `num_threads=auto` would give each every core."""
    from tests.bench_scripts import load_benchmark

    bench = load_benchmark("bench_pretraining")
    monkeypatch.setattr(bench, "usable_cores", lambda: 4)
    assert bench.thread_share(["seed=1"], 2) == ["seed=1", "num_threads=2"]
    assert bench.thread_share([], 8) == ["num_threads=1"]
    assert bench.thread_share(["num_threads=3"], 2) == ["num_threads=3"]
