"""Checkpoint files: strict loads, atomic saves, round trips of every part, resolve_source(), LoRA split."""

import copy
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metis.checkpoints import io, published
from metis.checkpoints.io import CheckpointMismatchError, CheckpointNotFoundError, load_into, save_safetensors
from metis.checkpoints.sources import is_repo_id, resolve_source
from metis.checkpoints.lora import (adapter_state_dict, load_split, lora_state_dict, merged_state_dict, wrap_lora)
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A

TINY = dict(hidden_size=16, num_layers=2, num_heads=2, cond_codebook_size=8, cond_dim=4)
TINY_S2A = dict(num_quantizer=2, hidden_size=16, num_layers=1, num_heads=2, codebook_size=8, cond_codebook_size=8)
BASE_FILE = "metis_base/model.safetensors"


def tiny(ft_type=None, seed=0, **kw):
    torch.manual_seed(seed)
    return MetisStage1(**{**TINY, **kw}, ft_type=ft_type)


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every floating tensor randomised, so zero-init parts (gate, lora_B, biases) are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def stage1_outputs(model, seed: int = 5):
    """embeds and logits of one masked pass with adapter features (b=2, t=6)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, TINY["cond_codebook_size"], (2, 6), generator=g)
    mask = (torch.rand(2, 6, 1, generator=g) > 0.5).float()
    x_mask = torch.ones(2, 6)
    x_mask[1, 4:] = 0
    t = torch.rand(2, generator=g)
    f = torch.randn(2, 6, TINY["cond_dim"], generator=g)
    with torch.no_grad():
        x = model.embed_input(x0, mask) + model.cond_adapter(f)
        embeds = model.diff_estimator(x, t, x_mask)
        return embeds, model.to_logit(embeds)


# ----------------------------------------------------------------------------- strict loading


def test_missing_key_named(tmp_path):
    model = tiny()
    sd = model.state_dict()
    del sd["diff_estimator.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing:\s+diff_estimator\.layers\.1\.mlp\.up_proj\.weight") as e:
        load_into(tiny(), sd, source="somewhere/base.safetensors")
    assert "somewhere/base.safetensors" in str(e.value)
    assert e.value.missing == ["diff_estimator.layers.1.mlp.up_proj.weight"] and not e.value.unexpected


def test_unexpected_key_named():
    sd = tiny().state_dict()
    sd["phone_emb.weight"] = torch.zeros(1024, 16)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected:\s+phone_emb\.weight") as e:
        load_into(tiny(), sd, source="f.safetensors")
    assert e.value.unexpected == ["phone_emb.weight"] and not e.value.missing


def test_misshaped_key_named_with_both_shapes():
    sd = tiny().state_dict()
    sd["to_logit.weight"] = torch.zeros(9, 16)
    with pytest.raises(CheckpointMismatchError, match=r"to_logit\.weight: file \[9, 16\] vs model \[8, 16\]") as e:
        load_into(tiny(), sd, source="f.safetensors")
    assert e.value.mismatched == {"to_logit.weight": ((9, 16), (8, 16))}


def test_all_mismatch_kinds_listed_together():
    sd = tiny().state_dict()
    del sd["mask_emb.weight"]
    sd["extra.weight"] = torch.ones(2)
    sd["to_logit.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as e:
        load_into(tiny(), sd, source="f")
    assert (e.value.missing, e.value.unexpected, list(e.value.mismatched)) == (["mask_emb.weight"], ["extra.weight"], ["to_logit.bias"])
    assert "1 missing, 1 unexpected, 1 mis-shaped" in str(e.value)


def test_strict_load_copies_values_and_allow_missing():
    src = perturbed(tiny())
    dst = tiny(seed=3)
    load_into(dst, src.state_dict(), source="f")
    assert same(dst.state_dict(), src.state_dict())

    se_model = tiny("se", seed=4)
    before = copy.deepcopy(se_model.cond_adapter.state_dict())
    load_into(se_model, src.state_dict(), source="f", allow_missing=("cond_adapter.*",))
    assert same(se_model.cond_adapter.state_dict(), before)
    with pytest.raises(CheckpointMismatchError, match="cond_adapter.gate_scale"):
        load_into(tiny("se"), src.state_dict(), source="f")


def test_zero_size_s2a_key_present_or_absent():
    """docs/reference.md Q14: S2A's zero-size diff_estimator.embed_tokens.weight is accepted either way."""
    torch.manual_seed(0)
    src = perturbed(MaskGCTS2A(**TINY_S2A))
    sd = src.state_dict()
    assert tuple(sd["diff_estimator.embed_tokens.weight"].shape) == (0, 256)
    torch.manual_seed(1)
    with_key, without_key = MaskGCTS2A(**TINY_S2A), MaskGCTS2A(**TINY_S2A)
    load_into(with_key, sd, source="s2a")
    load_into(without_key, {k: v for k, v in sd.items() if "embed_tokens" not in k}, source="s2a")
    assert same(with_key.state_dict(), sd) and same(without_key.state_dict(), sd)
    # ... and a model without the key accepts a file that has it, but not a non-empty stray tensor.
    lin = torch.nn.Linear(2, 2)
    load_into(lin, {**lin.state_dict(), "embed_tokens.weight": torch.empty(0, 256)}, source="f")
    with pytest.raises(CheckpointMismatchError, match="embed_tokens"):
        load_into(lin, {**lin.state_dict(), "embed_tokens.weight": torch.empty(1, 256)}, source="f")
    with pytest.raises(CheckpointMismatchError, match="embed_tokens"):
        load_into(MaskGCTS2A(**TINY_S2A), {k: v for k, v in sd.items() if "embed_tokens" not in k}, source="s2a",
                  ignore_zero_size=False)


# ----------------------------------------------------------------------------- atomic saving


def test_save_round_trip_with_shared_and_strided_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"tied_a": base, "tied_b": base, "row": base[1], "transposed": base.t(), "empty": torch.empty(0, 256)}
    path = save_safetensors(sd, tmp_path / "sub" / "x.safetensors", metadata={"note": "hi"})
    back = load_file(path)
    assert same(back, {k: v.contiguous() for k, v in sd.items()})
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"note": "hi"}
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors(sd, tmp_path / "y.safetensors", metadata={"n": 1})
    with pytest.raises(ValueError, match="meta device"):
        save_safetensors({"w": torch.empty(2, device="meta")}, tmp_path / "z.safetensors")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    old = {"w": torch.ones(4)}
    save_safetensors(old, path)

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 37)  # half a header, then the "machine dies"
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"w": torch.zeros(1000)}, path)
    assert same(load_file(path), old)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"], "temporary file left behind"


# ----------------------------------------------------------------------------- published round trips


def test_published_round_trip_metis_base(tmp_path):
    model = perturbed(tiny())
    path = published.save(model, "metis_base", tmp_path / BASE_FILE)
    back = published.load("metis_base", tmp_path, **TINY)  # folder laid out like amphion/metis
    assert same(back.state_dict(), model.state_dict())
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        assert f.metadata()["metis.kind"] == "metis_base"
    # The file has exactly the model's keys: the reference's strict load_model would accept it.
    assert set(load_file(path)) == set(model.state_dict())


def test_published_save_rejects_wrong_kind(tmp_path):
    with pytest.raises(CheckpointMismatchError, match=r"unexpected:\s+cond_adapter\.#?"):
        published.save(tiny("se"), "metis_base", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing:\s+phone_emb\.weight"):
        published.save(tiny(), "metis_tts", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_published_load_rejects_other_sizes(tmp_path):
    published.save(perturbed(tiny()), "metis_base", tmp_path / "f.safetensors")
    with pytest.raises(CheckpointMismatchError, match=str(tmp_path / "f.safetensors")):
        published.load("metis_base", tmp_path / "f.safetensors", **{**TINY, "cond_codebook_size": 9})


def test_published_round_trip_lora_and_adapter_files(tmp_path):
    wrapped = wrap_lora(perturbed(tiny("se")), r=4)
    perturbed(wrapped, seed=7)
    published.save(wrapped, "metis_se_lora", tmp_path / "lora.safetensors")
    published.save(wrapped, "metis_se_adapter", tmp_path / "adapter.safetensors")
    lora_file = load_file(tmp_path / "lora.safetensors")
    assert same(lora_file, lora_state_dict(wrapped)) and len(lora_file) == 2 * 7 * TINY["num_layers"]
    assert same(load_file(tmp_path / "adapter.safetensors"), adapter_state_dict(wrapped))
    assert sorted(adapter_state_dict(wrapped)) == [f"model.cond_adapter.{k}" for k in
                                                   ("gate_scale", "in_linear.bias", "in_linear.weight",
                                                    "out_linear.bias", "out_linear.weight")]

    lora_back = published.load("metis_se_lora", tmp_path / "lora.safetensors", lora=(4, 8), **TINY)
    assert same(lora_state_dict(lora_back), lora_state_dict(wrapped))
    adapter_back = published.load("metis_se_adapter", tmp_path / "adapter.safetensors", **TINY)
    assert same(adapter_state_dict(adapter_back), adapter_state_dict(wrapped))
    with pytest.raises(CheckpointMismatchError, match=r"lora_A\.default\.weight: file \[4, 16\] vs model \[2, 16\]"):
        published.load("metis_se_lora", tmp_path / "lora.safetensors", lora=(2, 4), **TINY)
    with pytest.raises(CheckpointMismatchError, match="cond_adapter"):
        published.load("metis_se_adapter", tmp_path / "lora.safetensors", **TINY)


def test_l2s_adapter_file_has_the_sequential_keys():
    assert sorted(adapter_state_dict(tiny("l2s"))) == ["model.cond_adapter.0.bias", "model.cond_adapter.0.weight",
                                                       "model.cond_adapter.2.bias", "model.cond_adapter.2.weight"]


# ----------------------------------------------------------------------------- resolve_source()


def _hf_cache(root: Path, repo: str, files: dict[str, dict]) -> Path:
    """A Hugging Face hub cache holding `files` of `repo` at revision main."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
    for name, sd in files.items():
        save_safetensors(sd, snapshot / name)
    (root / f"models--{repo.replace('/', '--')}" / "refs").mkdir(parents=True)
    (root / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text(rev)
    return snapshot


def test_resolve_file_and_folder(tmp_path):
    f = save_safetensors({"w": torch.ones(1)}, tmp_path / BASE_FILE)
    assert resolve_source(f, BASE_FILE).path == f and not resolve_source(f).is_export
    assert resolve_source(tmp_path, BASE_FILE).path == f
    with pytest.raises(CheckpointNotFoundError, match=r"metis_se/metis_se_lora_32\.safetensors not found in folder"):
        resolve_source(tmp_path, "metis_se/metis_se_lora_32.safetensors")
    with pytest.raises(CheckpointNotFoundError, match="neither an existing file"):
        resolve_source(tmp_path / "no" / "such" / "dir", BASE_FILE)
    with pytest.raises(CheckpointNotFoundError, match="is not an export"):
        resolve_source(tmp_path)  # a published layout, asked for an export


def test_resolve_export_folder_and_file(tmp_path):
    """This project's export (model.safetensors + config.json) is found as a folder or as its file, with
    its config, whatever published filename the caller looks for."""
    w = save_safetensors({"w": torch.ones(1)}, tmp_path / "export" / "model.safetensors")
    (tmp_path / "export" / "config.json").write_text('{"_target_": "metis.models.s2a.MaskGCTS2A", "hidden_size": 8}')
    for source, filename in ((tmp_path / "export", None), (tmp_path / "export", BASE_FILE), (w, None), (w, BASE_FILE)):
        found = resolve_source(source, filename)
        assert found.path == w and found.is_export and found.config["hidden_size"] == 8
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match="has config.json but no model.safetensors"):
        resolve_source(tmp_path / "half", BASE_FILE)
    # an export stands in for weights files only: other files of a folder are looked up as they are
    with pytest.raises(CheckpointNotFoundError, match=r"preprocessor_config.json not found in folder .*expected the file"):
        resolve_source(tmp_path / "export", "preprocessor_config.json")
    assert resolve_source(tmp_path / "export", "config.json").path == tmp_path / "export" / "config.json"
    (tmp_path / "export" / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        resolve_source(w)


def test_repo_ids_and_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_repo_id("amphion/metis") and is_repo_id("facebook/w2v-bert-2.0")
    for path in ("./amphion/metis", "/abs/x", "~/x", "outputs/demo/export", "org/model.safetensors", "a", "x.ckpt"):
        assert not is_repo_id(path), path
    (tmp_path / "amphion" / "metis").mkdir(parents=True)
    assert not is_repo_id("amphion/metis")  # an existing folder wins over the Hub


def test_resolve_from_hf_cache_offline(tmp_path, monkeypatch):
    model = perturbed(tiny())
    snapshot = _hf_cache(tmp_path / "hub", "amphion/metis", {BASE_FILE: model.state_dict()})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_source("amphion/metis", BASE_FILE).path
    assert path.resolve() == (snapshot / BASE_FILE).resolve()
    back = published.load("metis_base", **TINY)  # default source: the kind's repo, here from the cache
    assert same(back.state_dict(), model.state_dict())


def test_resolve_export_repo_from_hf_cache_offline(tmp_path, monkeypatch):
    """A Hub repo holding an export (model.safetensors + config.json at its root), read from the cache."""
    snapshot = _hf_cache(tmp_path / "hub", "someone/metis-se", {"model.safetensors": {"w": torch.ones(2)}})
    (snapshot / "config.json").write_text('{"ft_type": "se"}')
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = resolve_source("someone/metis-se")
    assert found.is_export and found.config == {"ft_type": "se"}
    assert torch.equal(load_file(found.path)["w"], torch.ones(2))


def test_resolve_offline_empty_cache_says_what_to_put_where(tmp_path, monkeypatch):
    (tmp_path / "hub").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError) as e:
        resolve_source("amphion/MaskGCT", "s2a_model/s2a_model_full/model.safetensors")
    msg = str(e.value)
    for part in ("amphion/MaskGCT", "offline", str(tmp_path / "hub"), "<folder>/s2a_model/s2a_model_full/model.safetensors"):
        assert part in msg, f"{part!r} not in: {msg}"
    with pytest.raises(ValueError, match="not released"):
        published.load("metis_se_full")


# ----------------------------------------------------------------------------- LoRA split


@pytest.fixture
def lora_release(tmp_path):
    """A tiny 'amphion/metis' folder: metis_base + se LoRA (r=4, alpha=8) + adapter, and the wrapped model."""
    base = perturbed(tiny(), seed=11)
    published.save(base, "metis_base", tmp_path / BASE_FILE)
    model = tiny("se")
    load_into(model, base.state_dict(), source="base", allow_missing=("cond_adapter.*",))
    wrapped = wrap_lora(model, r=4, alpha=8)
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():  # train the LoRA and the adapter a little
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    spec_lora, spec_adapter = published.KINDS["metis_se_lora"], published.KINDS["metis_se_adapter"]
    published.save(wrapped, "metis_se_lora", tmp_path / spec_lora.filename)
    published.save(wrapped, "metis_se_adapter", tmp_path / spec_adapter.filename)
    return tmp_path, wrapped.eval()


def test_lora_trainable_parts(lora_release):
    _, wrapped = lora_release
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(wrapped)) | set(adapter_state_dict(wrapped))


def test_lora_split_round_trip_matches_wrapped_model(lora_release):
    folder, wrapped = lora_release
    expected = stage1_outputs(wrapped.model)
    merged = published.load_lora_split("se", folder, lora=(4, 8), **TINY).eval()
    assert isinstance(merged, MetisStage1)
    assert all(p.requires_grad for p in merged.parameters())
    for got, want in zip(stage1_outputs(merged), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    unmerged = published.load_lora_split("se", folder, lora=(4, 8), merge=False, **TINY).eval()
    for got, want in zip(stage1_outputs(unmerged.model), expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    # merged_state_dict == merge_and_unload, without touching the wrapped model
    before = {k: v.clone() for k, v in wrapped.state_dict().items()}
    ours = merged_state_dict(wrapped)
    assert same(wrapped.state_dict(), before)
    reference = copy.deepcopy(wrapped).merge_and_unload().state_dict()
    assert set(ours) == set(reference) == set(merged.state_dict())
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(ours[k], merged.state_dict()[k], atol=1e-6, rtol=0)
    # W' = W + (alpha / r) B A for a target
    q = wrapped.model.diff_estimator.layers[0].self_attn.q_proj
    w = q.base_layer.weight + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
    torch.testing.assert_close(ours["diff_estimator.layers.0.self_attn.q_proj.weight"], w)


def _split_paths(folder):
    return [folder / published.KINDS[k].filename for k in published.LORA_SPLITS["se"]]


def test_lora_split_base_with_adapter_keys_rejected(lora_release):
    folder, _ = lora_release
    base, adapter, lora = _split_paths(folder)
    bad = {**load_file(base), **{f"cond_adapter.{k}": v for k, v in tiny("se").cond_adapter.state_dict().items()}}
    with pytest.raises(CheckpointMismatchError, match=r"unexpected:\s+cond_adapter\.gate_scale") as e:
        load_split(bad, adapter, lora, {**TINY, "ft_type": "se"}, r=4)
    assert "without cond_adapter" in str(e.value)


def test_lora_split_adapter_file_checked(lora_release):
    folder, _ = lora_release
    base, adapter, lora = _split_paths(folder)
    sd = load_file(adapter)
    del sd["model.cond_adapter.gate_scale"]
    with pytest.raises(CheckpointMismatchError, match=r"missing:\s+model\.cond_adapter\.gate_scale"):
        load_split(base, sd, lora, {**TINY, "ft_type": "se"}, r=4)
    sd = load_file(adapter)
    sd["model.cond_adapter.in_linear.weight"] = torch.zeros(64, 5)
    with pytest.raises(CheckpointMismatchError, match=r"in_linear\.weight: file \[64, 5\] vs model \[64, 4\]"):
        load_split(base, sd, lora, {**TINY, "ft_type": "se"}, r=4)
    with pytest.raises(CheckpointMismatchError, match=str(adapter)):  # an l2s model wants the 4 MLP keys
        load_split(base, adapter, lora, {**TINY, "ft_type": "l2s"}, r=4)


def test_lora_split_lora_file_checked(lora_release):
    folder, _ = lora_release
    base, adapter, lora = _split_paths(folder)
    with pytest.raises(CheckpointMismatchError, match=r"lora_B\.default\.weight: file \[16, 4\] vs model \[16, 8\]"):
        load_split(base, adapter, lora, {**TINY, "ft_type": "se"}, r=8)
    sd = load_file(lora)
    key = "model.diff_estimator.layers.1.mlp.down_proj.lora_A.default.weight"
    del sd[key]
    sd["model.diff_estimator.layers.1.mlp.down_proj.lora_A.weight"] = torch.zeros(4, 64)  # peft-stripped name
    with pytest.raises(CheckpointMismatchError) as e:
        load_split(base, adapter, sd, {**TINY, "ft_type": "se"}, r=4)
    assert e.value.missing == [key] and e.value.unexpected == ["model.diff_estimator.layers.1.mlp.down_proj.lora_A.weight"]
