"""Every published file layout (tests/fixtures/layouts/*.json) is produced key for key, shape for
shape and dtype for dtype by the model that metis.checkpoints.published builds for it, with the
parameter counts of SUMMARY.json. Models are built on the meta device (shapes only, instant)."""

import json
from pathlib import Path

import pytest

from metis.checkpoints import published
from metis.checkpoints.lora import lora_state_dict

LAYOUT_DIR = Path(__file__).resolve().parent / "fixtures" / "layouts"
SUMMARY = json.loads((LAYOUT_DIR / "SUMMARY.json").read_text())
LAYOUT_FILES = sorted(p.stem for p in LAYOUT_DIR.glob("*.json") if p.stem != "SUMMARY")
LORA_TASKS = ("se", "tse", "vc")


def _layout(stem: str) -> dict:
    return json.loads((LAYOUT_DIR / f"{stem}.json").read_text())


def _kind(stem: str) -> str:
    assert stem in published.LAYOUTS, f"layout {stem}.json has no builder in metis.checkpoints.published.KINDS"
    return published.LAYOUTS[stem]


def test_layout_files_present():
    assert len(LAYOUT_FILES) == 27, LAYOUT_FILES


@pytest.mark.parametrize("stem", LAYOUT_FILES)
def test_layout(stem):
    kind = _kind(stem)
    model = published.build(kind, "meta")
    sd = published.file_state_dict(model, kind)
    tensors = _layout(stem)["tensors"]

    assert sorted(set(tensors) - set(sd)) == [], f"{stem}: keys missing from {kind}"
    assert sorted(set(sd) - set(tensors)) == [], f"{stem}: keys {kind} has that the layout lacks"
    wrong = {k: (list(sd[k].shape), str(sd[k].dtype), v) for k, v in tensors.items()
             if [list(sd[k].shape), str(sd[k].dtype).removeprefix("torch.")] != v}
    assert not wrong, f"{stem}: shape/dtype differ (ours vs layout): {wrong}"
    prefix = published.KINDS[kind].prefix
    assert all(k.startswith(prefix) for k in sd), f"{stem}: keys without prefix {prefix!r}"

    counts = SUMMARY[stem]
    assert len(sd) == counts["num_tensors"]
    assert sum(v.numel() for v in sd.values()) == counts["total_numel"]
    if "num_parameters" in counts:  # whole-model layouts
        assert sum(p.numel() for p in model.parameters()) == counts["num_parameters"]


@pytest.mark.parametrize("stem", [s for s in LAYOUT_FILES if "num_trainable_parameters" in SUMMARY[s]])
def test_trainable_counts_as_reference(stem):
    """What the reference's models mark trainable; for LoRA-wrapped ones that is plain LoraModel (docs/reference.md Q13)."""
    kind = _kind(stem)
    model = published.build(kind, "meta", trainable_modules=()) if published.KINDS[kind].lora else published.build(kind, "meta")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == SUMMARY[stem]["num_trainable_parameters"]


@pytest.mark.parametrize("task", LORA_TASKS)
def test_lora_trainable_with_adapter(task):
    """Plain LoraModel freezes the adapter (SUMMARY trainable_under_LoraModel_*); wrap_lora keeps it trainable."""
    kind = f"metis_{task}_lora"
    plain = published.build(kind, "meta", trainable_modules=())
    frozen = SUMMARY[f"trainable_under_LoraModel_{task}"]
    trainable = {n: p for n, p in plain.named_parameters() if p.requires_grad}
    assert len(trainable) == frozen["n_tensors"] and sum(p.numel() for p in trainable.values()) == frozen["numel"]
    assert not any(".cond_adapter." in n for n in trainable) and not frozen["has_cond_adapter"]
    assert set(trainable) == set(lora_state_dict(plain))

    model = published.build(kind, "meta")  # default: adapter trainable
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == SUMMARY[f"lora_plus_adapter_{task}"]
    assert {n for n in trainable if ".cond_adapter." in n} == {"model.cond_adapter." + k for k in
                                                                 model.model.cond_adapter.state_dict()}


def test_tts_lora_trainable_modules():
    """A TTS LoRA fine-tune keeps its new phone modules trainable when asked."""
    from metis.checkpoints.lora import TTS_TRAINABLE, wrap_lora

    model = published.build("metis_tts", "meta")
    wrapped = wrap_lora(model, r=32, trainable_modules=TTS_TRAINABLE)
    names = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    lora = set(lora_state_dict(wrapped))
    assert names - lora == {"model.phone_emb.weight", "model.diff_estimator.cond_mlp.0.weight",
                            "model.diff_estimator.cond_mlp.0.bias", "model.diff_estimator.cond_mlp.2.weight",
                            "model.diff_estimator.cond_mlp.2.bias"}
    with pytest.raises(ValueError, match="cond_adapter"):
        wrap_lora(published.build("metis_tts", "meta"), trainable_modules=("cond_adapter",))


def test_every_kind_is_described_by_a_layout():
    for kind, spec in published.KINDS.items():
        assert spec.layouts, f"{kind} has no layout"
        for stem in spec.layouts:
            assert stem in LAYOUT_FILES, f"{kind}: layout {stem}.json does not exist"
