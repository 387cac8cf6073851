"""FinetuneModule: parameter counts at the real size, a short fine-tune per task (loss falls, frozen
base bit-identical, exports reload strictly and give the trained module's outputs), init errors."""

import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from metis import tasks as registry
from metis.checkpoints.io import CheckpointMismatchError, load_into, save_safetensors
from metis.checkpoints.lora import load_split
from metis.conditions.builders import SEConditions, TTSConditions
from metis.lightning.finetune_export import ExportFinetuned
from metis.lightning.finetune_init import load_init
from metis.lightning.finetune_module import FinetuneModule
from metis.models.metis_stage1 import MetisStage1
from safetensors.torch import load_file
from tests.finetune.synthetic_speech import make_batch

SUMMARY = json.loads(open("tests/fixtures/layouts/SUMMARY.json").read())
TINY_NET = dict(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=16, norm_init="unit")


def _meta_module(task, r, **net_kwargs):
    with torch.device("meta"):
        net = MetisStage1(ft_type=None if task == "tts" else task, **net_kwargs)
    conditioner = TTSConditions() if task == "tts" else SEConditions(degrader=None)
    return FinetuneModule(net, conditioner, partial(torch.optim.AdamW), task=task, init="amphion/metis",
                          peft={"method": "lora", "r": r} if r else {"method": "full"})


@pytest.mark.parametrize("task,r", [("se", 32), ("tse", 32), ("vc", 16)])
def test_parameter_counts_at_real_size(task, r):
    module = _meta_module(task, r)
    assert module.n_trainable == SUMMARY[f"lora_plus_adapter_{task}"]
    assert module.n_total == SUMMARY[f"ckpt_lorawrapped_{task}__{task}"]["total_numel"]
    if task == "se":
        assert module.n_trainable == 33_824_257 and module.n_total == 759_769_089
        assert module.summary == "LoRA r=32 + adapter: 33.8M of 759.8M trainable"


def test_full_and_omni_counts_at_real_size():
    full = _meta_module("vc", 0)
    assert full.n_trainable == full.n_total == SUMMARY["ckpt_full_vc__ft"]["total_numel"]
    omni = _meta_module("omni", 0, use_phone_cond=True)
    assert omni.n_total == SUMMARY["ckpt_full_omni__omni"]["total_numel"]
    tts = _meta_module("tts", 32, use_phone_cond=True)
    assert tts.summary.startswith("LoRA r=32 + phone modules:")
    assert tts.n_trainable == 32 * 565_248 + (tts.n_total - 32 * 565_248 - SUMMARY["metis_stage1_base__metis_base_model_safetensors"]["total_numel"])


@pytest.fixture
def base_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "base" / "model.safetensors"
    save_safetensors(MetisStage1(**TINY_NET).state_dict(), path)
    return path


def _step_loss(module, inputs, seed=0):
    torch.manual_seed(seed)
    return module.model_step(inputs)[0]


@pytest.mark.parametrize("task", list(registry.TASKS))
def test_short_lora_finetune_per_task(task, tiny_cfg, tok, base_file, tmp_path):
    cfg = tiny_cfg(f"task={task}", f"init={base_file}", "peft=lora", "peft.r=4")
    module = instantiate(cfg.model, conditioner=instantiate(cfg.data.conditions))  # simulated in-process here
    module.setup("fit")
    frozen = {n: p.detach().clone() for n, p in module.net.named_parameters() if not p.requires_grad}
    assert frozen and all("lora_" not in n for n in frozen)
    batch = make_batch(tok, 4, seed=3, vis_dim=768 if task == "l2s" else 0)
    if task == "omni":
        module.conditioner.weights = torch.tensor([1.0 if n == "tse" else 0.0 for n in module.conditioner.names],
                                                  dtype=torch.float64)
    module.conditioner(make_batch(tok, 3, seed=2, vis_dim=768 if task == "l2s" else 0), module.extractor,
                       torch.Generator().manual_seed(0))  # reservoir prompts for tse/vc
    inputs = module.build_inputs(batch, seed=5, split="train")
    if registry.get(task).adapter:
        assert inputs.finetune_cond.shape[:2] == inputs.x0.shape
    opt = torch.optim.AdamW([p for p in module.net.parameters() if p.requires_grad], lr=3e-3)
    before = float(_step_loss(module, inputs))
    for i in range(25):
        opt.zero_grad()
        _step_loss(module, inputs, seed=100 + i).backward()
        opt.step()
    after = float(_step_loss(module, inputs))
    assert after < before - 0.05, (before, after)
    for n, p in module.net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"

    # export, reload strictly, same outputs as the trained module (eval: no LoRA dropout)
    export = ExportFinetuned(str(tmp_path / "export"), model_config=OmegaConf.to_container(cfg.model.net, resolve=True))
    paths = export.export(SimpleNamespace(global_step=25, is_global_zero=True, strategy=None), module)
    module.eval()
    kwargs = inputs.model_kwargs()
    torch.manual_seed(9)
    expected = module.net(**kwargs).logits
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    net_kwargs = {k: v for k, v in config.items() if k != "_target_"}
    merged = load_into(MetisStage1(**net_kwargs), load_file(str(paths["model"])), source=str(paths["model"])).eval()
    torch.manual_seed(9)
    assert torch.allclose(merged(**kwargs).logits, expected, atol=1e-4)
    if registry.get(task).adapter and not registry.get(task).phones:
        assert set(paths) == {"model", "lora", "adapter"}
        split = load_split(base_file, paths["adapter"], paths["lora"], net_kwargs, r=4).eval()
        torch.manual_seed(9)
        assert torch.allclose(split(**kwargs).logits, expected, atol=1e-4)
    else:
        assert "adapter" not in paths or task == "omni"


def test_full_finetune_trains_everything(tiny_cfg, tok, base_file):
    module = instantiate(tiny_cfg("task=se", f"init={base_file}", "peft=full").model)
    assert module.n_trainable == module.n_total and module.summary.startswith("full fine-tune")


@pytest.mark.parametrize("peft", ["peft=full", "peft=lora"])
def test_new_modules_train_at_their_lr_scale(tiny_cfg, base_file, peft):
    cfg = tiny_cfg("task=se", f"init={base_file}", peft, "model.new_module_lr_scale=10")
    module = instantiate(cfg.model)
    opt = module.configure_optimizers()["optimizer"]
    lr = float(cfg.model.optimizer.lr)
    ids = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    names = dict(module.net.named_parameters())
    adapter = [n for n, p in names.items() if p.requires_grad and ".cond_adapter." in f".{n}"]
    rest = [n for n, p in names.items() if p.requires_grad and n not in adapter]
    assert adapter and rest
    assert all(ids[id(names[n])] == pytest.approx(10 * lr) for n in adapter)
    assert all(ids[id(names[n])] == pytest.approx(lr) for n in rest)
    # without the option every parameter trains at the optimizer's lr, in the two weight-decay groups
    plain = instantiate(tiny_cfg("task=se", f"init={base_file}", peft).model).configure_optimizers()["optimizer"]
    assert len(plain.param_groups) == 2 and all(g["lr"] == pytest.approx(lr) for g in plain.param_groups)


def test_init_loads_base_strictly_and_keeps_new_modules_fresh(base_file):
    net = MetisStage1(ft_type="se", cond_dim=160, **TINY_NET)
    info = load_init(net, base_file)
    assert info["new"] and all(k.startswith("cond_adapter.") for k in info["new"])
    assert float(net.cond_adapter.gate_scale) == 0.0
    base = load_file(str(base_file))
    assert torch.equal(net.cond_emb.weight, base["cond_emb.weight"])


def test_init_errors_name_the_file_and_keys(tmp_path, base_file):
    net = MetisStage1(ft_type="se", cond_dim=160, **TINY_NET)
    with pytest.raises(FileNotFoundError, match="python train.py"):
        load_init(net, tmp_path / "outputs/demo/export")
    sd = load_file(str(base_file))
    del sd["cond_emb.weight"]
    bad = tmp_path / "bad.safetensors"
    save_safetensors(sd, bad)
    with pytest.raises(CheckpointMismatchError, match="cond_emb.weight") as err:
        load_init(net, bad)
    assert str(bad) in str(err.value)
    (tmp_path / "exp").mkdir()
    save_safetensors(load_file(str(base_file)), tmp_path / "exp" / "model.safetensors")
    (tmp_path / "exp" / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="hidden_size: 64"):
        load_init(net, tmp_path / "exp")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_init(net, tmp_path)
    big = MetisStage1(ft_type="se", cond_dim=160, **{**TINY_NET, "hidden_size": 64})
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        load_init(big, base_file)


def _lora_se(tiny_cfg, base_file):
    return instantiate(tiny_cfg("task=se", f"init={base_file}", "peft=lora", "peft.r=4").model)


def test_deepspeed_checkpoint_without_state_dict_checks_the_run_record(tiny_cfg, base_file, tmp_path):
    """A DeepSpeed checkpoint hands the module only its client state (no "state_dict": the engine restores
    the tensors): the run record is still checked, nothing is loaded, no state_dict is made up."""
    module = _lora_se(tiny_cfg, base_file)
    module.setup("fit")
    client = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(client)
    assert set(client["state_dict"]) == module.trainable_keys()
    del client["state_dict"]  # what Lightning's DeepSpeedStrategy.save_checkpoint drops before the engine saves
    with torch.no_grad():
        module.net.model.cond_adapter.gate_scale.fill_(0.5)
    module.on_load_checkpoint(client)
    assert "state_dict" not in client
    assert float(module.net.model.cond_adapter.gate_scale) == 0.5  # left to the engine

    for key, value, match in [("r", 8, "r=8"), ("task", "tse", "task='tse'"), ("method", "full", "method='full'"),
                              ("base_sha256", "0" * 64, "another base")]:
        bad = {**client, "metis_finetune": {**client["metis_finetune"], key: value}}
        with pytest.raises(ValueError, match=match):
            module.on_load_checkpoint(bad)
    with pytest.raises(ValueError, match="not a fine-tuning checkpoint"):
        module.on_load_checkpoint({k: v for k, v in client.items() if k != "metis_finetune"})

    full = instantiate(tiny_cfg("task=se", f"init={base_file}", "peft=full").model)
    record = {}
    full.on_save_checkpoint(record)
    record.pop("state_dict", None)
    full.on_load_checkpoint(record)  # a full fine-tune's DeepSpeed checkpoint: the record only
    assert "state_dict" not in record


def test_export_files_are_cut_from_the_given_state(tiny_cfg, base_file):
    """lora / adapter / merged files come from the state dict passed in (DeepSpeed: the gathered one), not
    from the module's parameters (ZeRO-3: shards)."""
    from metis.checkpoints.lora import adapter_state_dict, lora_state_dict, merged_state_dict

    net = _lora_se(tiny_cfg, base_file).net
    own = {k: v.clone() for k, v in net.state_dict().items()}
    state = {k: v.clone() + (1.0 if (".lora_B." in k or "cond_adapter" in k) and v.is_floating_point() else 0.0)
             for k, v in own.items()}
    assert set(lora_state_dict(net, state)) == set(lora_state_dict(net))
    for k, v in lora_state_dict(net, state).items():
        assert torch.equal(v, state[k])
    for k, v in adapter_state_dict(net, state).items():
        assert torch.equal(v, state[k]) and not torch.equal(v, own[k])
    merged = merged_state_dict(net, state)
    q = "diff_estimator.layers.1.self_attn.q_proj"
    a, b = state[f"model.{q}.lora_A.default.weight"], state[f"model.{q}.lora_B.default.weight"]
    expected = state[f"model.{q}.base_layer.weight"] + 2.0 * b @ a  # alpha = 2r
    torch.testing.assert_close(merged[f"{q}.weight"], expected)
    assert set(merged) == set(merged_state_dict(net)) and not any(".lora_" in k or "base_layer" in k for k in merged)
    for k, v in net.state_dict().items():
        assert torch.equal(v, own[k]), f"{k} changed"
