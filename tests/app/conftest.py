"""A folder of local models as `metis app` finds them: a tiny random model set in the published layouts
(tests/inference builds it) with a pipeline.yaml of its sizes, and a fine-tuned SE export with LoRA files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metis.checkpoints import published
from metis.checkpoints.io import save_safetensors
from tests.inference.conftest import STAGE1, build_repos, pipeline_kwargs, write_wav


def write_models(root: Path) -> dict[str, Path]:
    repos = build_repos(root / "tiny")
    kw = pipeline_kwargs(repos)
    kw.pop("device")
    kw.pop("progress")
    for key in ("metis", "maskgct", "w2v_bert", "stats"):  # relative to the set's folder, as a user would write them
        kw[key] = str(Path(kw[key]).relative_to(root / "tiny"))
    OmegaConf.save(OmegaConf.create(kw), root / "tiny" / "pipeline.yaml")
    export = root / "runs" / "demo_se" / "export"  # what ExportFinetuned writes for a LoRA r=16 SE fine-tune
    merged = published.load_lora_split("se", repos["metis"], **STAGE1)
    save_safetensors(merged.state_dict(), export / "model.safetensors")
    (export / "config.json").write_text(json.dumps({"_target_": "metis.models.metis_stage1.MetisStage1", "ft_type": "se", **STAGE1}))
    for name in ("metis_se_lora_16.safetensors", "metis_se_lora_16_adapter.safetensors"):
        (export / name).write_bytes(b"")  # only their names matter to the picker
    return {"root": root, "set": root / "tiny", "export": export}


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    return write_wav(tmp_path_factory.mktemp("speech") / "noisy.wav", 1.2, 2)
