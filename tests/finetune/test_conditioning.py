"""Condition builders: shapes, rates, alignment with the target tokens, and that the simulation does
what its info says (SNR / SIR within 0.5 dB), deterministically under a seed."""

import pytest
import torch

from metis import conditions as C
from metis.conditions.builders import (L2SConditions, OmniConditions, SEConditions, StandInL2SConditions, TSEConditions,
                                          TTSConditions, VCConditions, align_frames)
from metis.text import PHONE_PAD_ID
from tests.finetune.synthetic_speech import HOP, make_batch

CLEAN_SE = dict(noise=C.NoiseBank.coloured(), rirs=None, snr_db=(-5, 20), p_noise=1.0, p_reverb=0.0, p_clip=0.0,
                p_bandlimit=0.0)


def _check_alignment(inputs, tok):
    """finetune_cond = features of the condition waveform, cropped/padded to the token length."""
    feats = tok.features(inputs.cond_wavs)
    lens = inputs.x_mask.sum(1).long()
    for i, f in enumerate(feats):
        n = int(lens[i])
        assert torch.allclose(inputs.finetune_cond[i, :n], align_frames(f.float(), n))
        assert abs(f.shape[0] - n) <= 1  # docs/reference.md Q9: at most one frame off before alignment
        assert (inputs.finetune_cond[i, n:] == 0).all()


def test_align_frames_crops_and_pads():
    f = torch.arange(12.0).reshape(4, 3)
    assert torch.equal(align_frames(f, 3), f[:3])
    padded = align_frames(f, 6)
    assert padded.shape == (6, 3) and torch.equal(padded[4], f[3]) and torch.equal(padded[5], f[3])
    assert torch.equal(align_frames(f[:0], 2), torch.zeros(2, 3))


def test_se_snr_shapes_and_alignment(tok, gen):
    batch = make_batch(tok, 4, seed=1)
    inputs = SEConditions(C.SEDegrader(**CLEAN_SE))(batch, tok, gen)
    b, t = batch["sem"].shape
    assert inputs.x0.shape == (b, t) and inputs.finetune_cond.shape == (b, t, 160)
    assert torch.equal(inputs.x0, batch["sem"]) and torch.equal(inputs.x_mask, batch["sem_mask"])
    assert inputs.prompt_len.tolist() == [0] * b
    for i, info in enumerate(inputs.info):
        clean = batch["wav16"][i, : batch["wav16_lens"][i]]
        measured = C.snr_db(clean, inputs.cond_wavs[i] - clean)
        assert abs(measured - info["snr_db"]) < 0.5, (measured, info)
    _check_alignment(inputs, tok)


def test_se_is_deterministic_under_a_seed(tok):
    batch = make_batch(tok, 3, seed=2)
    builder = SEConditions(C.SEDegrader(rirs=C.RIRBank.simulated(), p_reverb=0.5, p_clip=0.5, p_bandlimit=0.5))
    a = builder(batch, tok, torch.Generator().manual_seed(7))
    b = builder(batch, tok, torch.Generator().manual_seed(7))
    c = builder(batch, tok, torch.Generator().manual_seed(8))
    assert torch.equal(a.finetune_cond, b.finetune_cond)
    assert not torch.equal(a.finetune_cond, c.finetune_cond)


def test_tse_prompt_mixture_and_fallback(tok, gen):
    builder = TSEConditions(C.TSEMixer(sir_db=(-5, 5), p_noise=0.0), max_prompt_frames=1000)
    first = make_batch(tok, 3, seed=3)
    out1 = builder(first, tok, gen)
    # empty reservoir: every prompt is the leading part of the utterance itself, counted
    assert out1.stats["prompt_fallback"] == 1.0
    for i in range(3):
        n = int(first["sem_lens"][i])
        assert int(out1.x_mask[i].sum()) == n and torch.equal(out1.x0[i, :n], first["sem"][i, :n])
    second = make_batch(tok, 3, seed=4)
    out2 = builder(second, tok, gen)
    assert out2.stats["prompt_fallback"] == 0.0
    for i, info in enumerate(out2.info):
        p = int(out2.prompt_len[i])
        n = int(second["sem_lens"][i])
        assert 0 < p and int(out2.x_mask[i].sum()) == p + n
        prompt_key = [k for k in first["key"] if k.startswith(second["speaker"][i])][0]
        j = first["key"].index(prompt_key)
        assert torch.equal(out2.x0[i, :p], first["sem"][j, :p])          # prompt = another utterance of the speaker
        assert torch.equal(out2.x0[i, p:p + n], second["sem"][i, :n])      # then the clean target
        clean = second["wav16"][i, : second["wav16_lens"][i]]
        mixture = out2.cond_wavs[i][p * HOP:]
        assert mixture.shape == clean.shape
        assert abs(C.snr_db(clean, mixture - clean) - info["sir_db"]) < 0.5
        assert not info["same_speaker_interferer"]
    _check_alignment(out2, tok)


def test_vc_source_is_perturbed_and_prompted(tok, gen):
    builder = VCConditions(C.VCPerturber(), p_drop_prompt=0.0)
    builder(make_batch(tok, 3, seed=5), tok, gen)  # fills the reservoir
    batch = make_batch(tok, 3, seed=6)
    out = builder(batch, tok, gen)
    for i in range(3):
        p, n = int(out.prompt_len[i]), int(batch["sem_lens"][i])
        assert p > 0 and torch.equal(out.x0[i, p:p + n], batch["sem"][i, :n])
        clean = batch["wav16"][i, : batch["wav16_lens"][i]]
        assert not torch.allclose(out.cond_wavs[i][p * HOP: p * HOP + len(clean)], clean, atol=1e-3)
    _check_alignment(out, tok)


def test_vc_prompt_dropout_keeps_target_only(tok, gen):
    builder = VCConditions(C.VCPerturber(), p_drop_prompt=1.0)
    batch = make_batch(tok, 2, seed=7)
    out = builder(batch, tok, gen)
    assert out.prompt_len.tolist() == [0, 0] and torch.equal(out.x0, batch["sem"])


def test_l2s_visual_upsampled_with_zero_prompt(gen, tok):
    batch = make_batch(tok, 3, seed=8, vis_dim=768)
    out = L2SConditions(prompt_ratio=(0.2, 0.4))(batch, None, gen)
    assert out.finetune_cond.shape[-1] == 768
    for i in range(3):
        p, n = int(out.prompt_len[i]), int(out.x_mask[i].sum())
        v = int(batch["vis_lens"][i])
        assert p % 2 == 0 and 0 < p < n and n == min(int(batch["sem_lens"][i]), 2 * v)
        assert (out.finetune_cond[i, :p] == 0).all()
        up = C.upsample_visual(batch["vis"][i, p // 2: v], 0)  # 50 Hz frames of the video after the prompt
        assert torch.allclose(out.finetune_cond[i, p:n], up[: n - p])
        assert torch.equal(out.x0[i, :n], batch["sem"][i, :n])


def test_demo_l2s_stand_in_is_the_l2s_condition_of_the_audio_log_mel(tok):
    batch = make_batch(tok, 3, seed=8)
    out = StandInL2SConditions(prompt_ratio=(0.2, 0.4))(batch, None, torch.Generator().manual_seed(3))
    vis = [C.audio_stand_in(w[: int(n)]) for w, n in zip(batch["wav16"], batch["wav16_lens"])]
    for v, n in zip(vis, batch["wav16_lens"]):  # 25 fps, normalised per bin over the utterance
        assert v.shape == (int(n) // 640, C.visual.STAND_IN_DIM)
        assert torch.allclose(v.mean(0), torch.zeros(v.shape[1]), atol=1e-4)
    padded = torch.zeros(3, max(len(v) for v in vis), vis[0].shape[1])
    for i, v in enumerate(vis):
        padded[i, : len(v)] = v
    ref = L2SConditions(prompt_ratio=(0.2, 0.4))({**batch, "vis": padded, "vis_lens": torch.tensor([len(v) for v in vis])},
                                                None, torch.Generator().manual_seed(3))
    assert torch.equal(out.finetune_cond, ref.finetune_cond) and torch.equal(out.x0, ref.x0)
    assert torch.equal(out.prompt_len, ref.prompt_len) and (out.prompt_len > 0).all()
    with pytest.raises(KeyError, match="wav16"):
        StandInL2SConditions()({k: v for k, v in batch.items() if not k.startswith("wav16")}, None, torch.Generator())


def test_tts_phone_prefix(tok, gen):
    batch = make_batch(tok, 3, seed=9)
    batch["text"][2] = ""
    out = TTSConditions()(batch, None, gen)
    assert out.finetune_cond is None and out.prompt_len is None
    assert out.phone_id.shape[0] == 3 and out.phone_mask.shape == out.phone_id.shape
    assert out.phone_mask[0].sum() > 3 and out.phone_mask[2].sum() == 0   # empty text: masked pad slot
    assert (out.phone_id[out.phone_mask == 0] == PHONE_PAD_ID).all()
    assert out.stats["empty_text"] == pytest.approx(1 / 3)


def test_omni_draws_tasks_by_weight(tok):
    builders = {"tts": TTSConditions(), "se": SEConditions(C.SEDegrader(**CLEAN_SE))}
    omni = OmniConditions(builders, {"tts": 1.0, "se": 3.0})
    batch = make_batch(tok, 2, seed=10, seconds=(0.5, 0.6))
    g = torch.Generator().manual_seed(0)
    tasks = [omni(batch, tok, g).task for _ in range(40)]
    assert set(tasks) == {"tts", "se"} and 20 <= tasks.count("se") <= 38
    with pytest.raises(ValueError, match="without a builder"):
        OmniConditions(builders, {"vc": 1.0})


def test_missing_fields_are_named(tok, gen):
    batch = make_batch(tok, 2, seed=11)
    del batch["wav16"]
    with pytest.raises(KeyError, match="wav16"):
        SEConditions(C.SEDegrader(**CLEAN_SE))(batch, tok, gen)
    with pytest.raises(KeyError, match="vis"):
        L2SConditions()(make_batch(tok, 2, seed=11), None, gen)
