"""`finetune(cfg)` end to end on the composed config: LoRA checkpoints hold only the trainable tensors,
`ckpt_path=last` resumes exactly, a checkpoint of another base is refused, exports reload."""

import pytest
import torch
from omegaconf import open_dict

from metis.checkpoints.io import save_safetensors
from metis.lightning.finetuning import comparison_table, finetune
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


def test_compare_scratch_prints_two_rows(tiny_cfg, tmp_path, capsys):
    base = _base(tmp_path / "base.safetensors")
    cfg = tiny_cfg(*SE, f"init={base}", "run_name=cmp", "ckpt_path=null", "compare_scratch=true", "trainer.max_steps=2")
    out = finetune(cfg)
    assert set(out["runs"]) == {"pretrained", "scratch"}
    assert out["runs"]["scratch"]["summary"].startswith("full fine-tune")
    assert out["runs"]["pretrained"]["summary"].startswith("LoRA r=4")
    for run in out["runs"].values():
        assert "val/acc_top1" in run["before"] and "val/acc_top1" in run["after"]
    printed = capsys.readouterr().out
    assert "pretrained" in printed and "scratch" in printed and out["table"] in printed
    assert len(comparison_table(out["runs"]).splitlines()) == 4
