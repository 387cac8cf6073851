"""The one generation chain: Pipeline (infer.py), the AudioSamples callback and the inference benchmark all
decode through `metis.inference.generate.generate` and give identical tokens and audio for one item."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import metis.inference.generate as chain
import metis.inference.pipeline as pipeline_module
import metis.lightning.audio_samples as audio_samples_module
from metis.inference.pipeline import Pipeline
from metis.inference.tasks import Request
from metis.lightning.audio_samples import AudioSamples
from metis.models.metis_stage1 import MetisStage1
from tests.bench_scripts import load_benchmark
from tests.inference.conftest import DECODER, S2A, SEM_CODES, perturb

def load_bench():
    return load_benchmark("bench_inference")


class Spy:
    """Wraps `generate` where a caller imported it and records every call's items and result."""

    def __init__(self, monkeypatch, module):
        self.calls = []
        monkeypatch.setattr(module, "generate", self)

    def __call__(self, items, *args, **kwargs):
        out = chain.generate(items, *args, **kwargs)
        self.calls.append((list(items), out))
        return out


def test_pipeline_audio_samples_and_benchmark_decode_identically(repos, pipeline, monkeypatch):
    net = perturb(MetisStage1(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=SEM_CODES), 21).eval()
    cb = AudioSamples(s2a=str(repos["maskgct"]), codec=str(repos["maskgct"]), prompt_seconds=0.1, stage1_steps=4,
                      s2a_1layer_steps=[3], s2a_full_steps=[3, 2] + [1] * 10, s2a_config=S2A, codec_config=DECODER, seed=5)
    g = torch.Generator().manual_seed(0)
    stash = {"sem": [torch.randint(0, SEM_CODES, (n,), generator=g) for n in (12, 20)],
             "ac": [torch.randint(0, 1024, (n + 1, 12), generator=g) for n in (12, 20)]}
    spies = {name: Spy(monkeypatch, m) for name, m in (("audio_samples", audio_samples_module),
                                                      ("pipeline", pipeline_module))}
    bench = load_bench()
    spies["bench"] = Spy(monkeypatch, bench)

    # 1. the training callback, on its stashed validation utterances (one batch)
    cb_wavs = cb.generate(net, stash, torch.device("cpu"))
    items = spies["audio_samples"].calls[0][0]
    assert [it.seed for it in items] == [5, 6] and [it.target_len for it in items] == [7, 15]
    s1, sf = cb._s2a_models["s2a_1layer"], cb._s2a_models["s2a_full"]

    # 2. the inference pipeline (what infer.py runs), on the same items
    pipe = Pipeline({"tts": net}, s1, sf, semantic=None, acoustic=pipeline.acoustic, progress=False)
    for it in items:
        it.task = "tts"
    pipe_wavs = pipe.decode_items(items)

    # 3. the benchmark, one item at a time
    decoder = SimpleNamespace(device=torch.device("cpu"), decode=pipeline.acoustic.decode)
    bench_wavs = [bench.decode_once(it, net, s1, sf, decoder, fast=False)[3] for it in items]

    results = {name: spy.calls for name, spy in spies.items()}
    assert [len(c) for c in results.values()] == [1, 1, 2]
    bench_sem = [out.semantic[0] for _, out in results["bench"]]
    bench_codes = [out.codes[0] for _, out in results["bench"]]
    for r in range(2):
        sem = results["audio_samples"][0][1].semantic[r]
        codes = results["audio_samples"][0][1].codes[r]
        assert sem.shape == (20 if r else 12,) and codes.shape == (sem.numel() - items[r].acoustic_prompt.shape[0], 12)
        assert torch.equal(results["pipeline"][0][1].semantic[r], sem) and torch.equal(bench_sem[r], sem)
        assert torch.equal(results["pipeline"][0][1].codes[r], codes) and torch.equal(bench_codes[r], codes)
        assert np.array_equal(cb_wavs[r], pipe_wavs[r].numpy()) and torch.equal(bench_wavs[r], pipe_wavs[r])
    assert not torch.equal(results["pipeline"][0][1].semantic[0][2:], stash["sem"][0][2:])  # really generated


@pytest.mark.parametrize("task", ["tts", "se"])
def test_pipeline_run_is_the_chain_on_its_prepared_items(pipeline, audio, task, monkeypatch):
    """infer.py's path (Pipeline.run): its waveform is the chain's output for the items `prepare` made."""
    spy = Spy(monkeypatch, pipeline_module)
    req = (Request("tts", prompt=str(audio["prompt"]), prompt_text="the prompt", text="hello there", target_seconds=0.4, seed=3)
           if task == "tts" else Request("se", input=str(audio["source"]), seed=3))
    wav = pipeline(req)
    (items, out), = spy.calls
    again = chain.generate(items, pipeline.stage1_model(task), pipeline.s2a_model("s2a_1layer"), pipeline.s2a_model("s2a_full"),
                           decode=pipeline.acoustic.decode)
    assert all(torch.equal(a, b) for a, b in zip(out.semantic, again.semantic))
    assert all(torch.equal(a, b) for a, b in zip(out.codes, again.codes))
    assert torch.equal(wav, again.wavs[0])
