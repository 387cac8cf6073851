"""The task registry (`metis.tasks`) is the one list of tasks: every consumer agrees with it."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metis import tasks as registry
from metis.checkpoints import published
from metis.eval.metrics import METRIC_NAMES
from metis.eval.protocols import TASK_METRICS, TASKS_WITH_INPUT
from metis.inference import loading
from metis.inference.tasks import CHUNKED_TASKS, STAGE1_DEFAULTS, TASKS, Request
from metis.models.metis_stage1 import MetisStage1

TASK_DIR = Path(__file__).parents[1] / "configs" / "task"
TINY = dict(hidden_size=16, num_layers=1, num_heads=2, cond_codebook_size=8, phone_vocab_size=8, phone_pad_id=7)


def test_every_task_has_one_config_and_back():
    assert sorted(p.stem for p in TASK_DIR.glob("*.yaml")) == sorted(registry.TASKS)


@pytest.mark.parametrize("name", list(registry.TASKS))
def test_task_config_agrees_with_its_spec(name):
    spec = registry.get(name)
    cfg = OmegaConf.load(TASK_DIR / f"{name}.yaml")
    assert cfg.model.task == name and cfg.data.conditions._target_ == spec.conditioner
    assert tuple(cfg.data.fields) == spec.fields
    net = cfg.model.net
    assert (net.ft_type is not None) == spec.adapter and (not spec.adapter or net.ft_type == spec.ft_type)
    assert net.use_phone_cond == spec.phones
    assert (OmegaConf.to_container(cfg.model)["features"] is not None) == spec.features
    if spec.cond_dim is not None:
        assert net.cond_dim == spec.cond_dim


@pytest.mark.parametrize("name", list(registry.TASKS))
def test_model_kwargs_build_the_model_the_task_needs(name):
    spec = registry.get(name)
    net = MetisStage1(**{**spec.model_kwargs(feature_dim=12), **TINY})
    assert (net.cond_adapter is not None) == spec.adapter and (net.phone_emb is not None) == spec.phones
    if spec.adapter:
        first = net.cond_adapter.in_linear if hasattr(net.cond_adapter, "in_linear") else net.cond_adapter[0]
        assert first.in_features == (spec.cond_dim or 12)


def test_inference_tables_derive_from_the_registry():
    inference = [n for n, s in registry.TASKS.items() if s.input is not None]
    assert list(TASKS) == inference and "omni" not in TASKS
    assert list(CHUNKED_TASKS) == [n for n in inference if registry.get(n).chunked]
    for n in inference:
        assert dict(vars(STAGE1_DEFAULTS[n])) == dict(registry.get(n).decode)
    assert loading.STAGE1_KINDS == {n: s.checkpoint for n, s in registry.TASKS.items() if s.checkpoint}
    for role, kind in loading.STAGE1_KINDS.values():
        assert role in ("metis", "maskgct") and kind in published.KINDS


def test_published_lora_splits_are_the_registry_ranks():
    lora = {n: s.lora_r for n, s in registry.TASKS.items() if s.lora_r}
    assert set(published.LORA_SPLITS) == set(lora)
    for n, r in lora.items():
        assert published.KINDS[f"metis_{n}_lora"].lora == (r, 2 * r)


@pytest.mark.parametrize("name", registry.names(inference=True))
def test_request_needs_the_registry_fields(name):
    spec = registry.get(name)
    full = {f: "x" for f in spec.request_fields}
    Request(task=name, **full).validate()
    for f in spec.request_fields:
        with pytest.raises(ValueError, match=f):
            Request(task=name, **{**full, f: None}).validate()


def test_eval_metric_sets_come_from_the_registry():
    assert TASK_METRICS == {n: list(s.metrics) for n, s in registry.TASKS.items() if s.metrics}
    assert TASKS_WITH_INPUT == {n for n, s in registry.TASKS.items() if s.score_input}
    assert {m for ms in TASK_METRICS.values() for m in ms} <= set(METRIC_NAMES)


def test_unknown_task_is_named():
    with pytest.raises(KeyError, match="unknown task 'nope'; tasks are tts"):
        registry.get("nope")


def test_pipeline_serves_published_tasks_and_those_given_a_checkpoint():
    published_tasks = [n for n in TASKS if registry.get(n).checkpoint is not None]
    assert loading.default_tasks({}) == published_tasks
    assert loading.default_tasks({TASKS[0]: "some/export"}) == published_tasks
    # omni serves the tasks the registry says it serves; the others keep their own model
    served = registry.get("omni").serves
    others = [n for n in TASKS if n not in served]
    assert loading.stage1_keys(list(TASKS), omni=True) == ["omni", *others]
    assert loading.stage1_keys(["tts", "se"], omni=False) == ["tts", "se"]


def test_a_task_with_nothing_published_is_named_when_asked_for(monkeypatch):
    spec = registry.TaskSpec("newtask", "a task with nothing published", ft_type="newtask", decode=registry.decode(10, 0.0))
    monkeypatch.setattr(loading, "TASKS", (*TASKS, "newtask"))
    monkeypatch.setattr(registry, "TASKS", {**registry.TASKS, "newtask": spec})
    assert "newtask" not in loading.default_tasks({}) and "newtask" in loading.default_tasks({"newtask": "/x"})
    lines = loading.missing_checkpoints(["newtask"], metis="/nonexistent/metis", maskgct="/nonexistent/maskgct",
                                        w2v_bert="/nonexistent/w2v", stage1={}, semantic=False, acoustic=False)
    assert any(line.startswith("newtask stage 1 (pipeline.stage1.newtask): nothing is published") for line in lines), lines
