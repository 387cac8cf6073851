"""MetisStage1 behaviour on tiny configs: training corruption, padding, phones, adapters,
gradient checkpointing and reverse diffusion (docs/reference.md §2)."""

import json
import math
from pathlib import Path

import pytest
import torch

from metis.models.decoding import ReplayNoise, UniformNoise
from metis.models.metis_stage1 import MetisStage1, SimpleAdapter

V = 16
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, cond_codebook_size=V, cond_dim=8)


def tiny(**kw) -> MetisStage1:
    torch.manual_seed(0)
    return MetisStage1(**{**TINY, **kw})


class RecordingNoise(UniformNoise):
    """Draws from a generator and keeps every draw, to replay them later."""

    def __init__(self, generator):
        super().__init__(generator)
        self.draws = []

    def __call__(self, shape, device):
        u = super().__call__(shape, device)
        self.draws.append(u.clone())
        return u


def test_prompt_positions_never_masked():
    model = tiny()
    x0 = torch.randint(0, V, (4, 40))
    for seed in range(20):
        torch.manual_seed(seed)
        t = torch.rand(4)
        _, _, mask, prompt_len, _ = model.forward_diffusion(x0, t)  # drawn prompt lengths
        is_prompt = torch.arange(40)[None] < prompt_len[:, None]
        assert mask[..., 0][is_prompt].sum() == 0
        _, _, mask, _, _ = model.forward_diffusion(x0, t, prompt_len=torch.tensor([0, 5, 20, 39]))
        assert mask[1, :5].sum() == 0 and mask[2, :20].sum() == 0 and mask[3, :39].sum() == 0


def test_drawn_prompt_len_range_and_dropout():
    model = tiny(cfg_scale=0.5)
    x0 = torch.randint(0, V, (3, 40))  # randint(min(40 // 4, 5), int(0.4 * 40)) = [5, 16)
    seen_zero = seen_prompt = False
    for seed in range(40):
        torch.manual_seed(seed)
        prompt_len = model.forward_diffusion(x0, torch.rand(3))[3]
        if (prompt_len == 0).all():
            seen_zero = True  # the whole batch is unconditional
        else:
            assert ((prompt_len >= 5) & (prompt_len < 16)).all(), prompt_len
            seen_prompt = True
    assert seen_zero and seen_prompt


def test_mask_ratio_floored():
    model = tiny()
    t = torch.tensor([1e-5, 0.05, 0.5, 1.0])
    x0 = torch.randint(0, V, (4, 4000))
    torch.manual_seed(0)
    _, _, mask, _, mask_prob = model.forward_diffusion(x0, t, prompt_len=torch.zeros(4, dtype=torch.long))
    expected = torch.sin(t * math.pi / 2).clamp(min=0.2)
    torch.testing.assert_close(mask_prob, expected)
    assert mask_prob[0] == mask_prob[1] == pytest.approx(0.2)
    # The realised masked fraction follows the floored ratio, not sin(pi t / 2) ~ 0.
    torch.testing.assert_close(mask[..., 0].mean(1), expected, atol=0.03, rtol=0)


def test_every_row_has_a_masked_frame():
    model = tiny()
    x0 = torch.randint(0, V, (8, 4))
    for seed in range(10):
        torch.manual_seed(seed)
        # Only frame 3 may be masked; when Bernoulli leaves the row empty it is masked anyway (docs/reference.md Q5).
        mask = model.forward_diffusion(x0, torch.full((8,), 1e-5), prompt_len=torch.full((8,), 3))[2][..., 0]
        assert (mask[:, :3] == 0).all() and (mask[:, 3] == 1).all()


def test_xt_assembly():
    model = tiny()
    x0 = torch.randint(0, V, (2, 6))
    mask = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
    xt = model.embed_input(x0, mask)
    for b in range(2):
        for i in range(6):
            expected = model.mask_emb.weight[0] if mask[b, i] else model.cond_emb.weight[x0[b, i]]
            assert torch.equal(xt[b, i], expected)


def test_bad_prompt_len_and_short_sequences_raise():
    model = tiny()
    with pytest.raises(ValueError, match="prompt_len"):
        model.forward_diffusion(torch.zeros(2, 5, dtype=torch.long), torch.rand(2), prompt_len=torch.tensor([5, 0]))
    t = torch.rand(2)
    torch.manual_seed(0)  # u = 0.496 > cfg_scale: a prompt length is drawn from an empty range (docs/reference.md Q4)
    with pytest.raises(ValueError, match="T >= 3"):
        model.forward_diffusion(torch.zeros(2, 2, dtype=torch.long), t)


def test_padding_excluded_from_final_mask():
    model = tiny()
    x0 = torch.randint(0, V, (2, 20))
    x_mask = torch.ones(2, 20)
    x_mask[1, 12:] = 0
    for seed in range(5):
        torch.manual_seed(seed)
        out = model(x0, x_mask)
        assert out.logits.shape == (2, 20, V) and out.final_mask.shape == (2, 20, 1)
        assert (out.final_mask[1, 12:] == 0).all()
        assert torch.equal(out.final_mask, out.final_mask * x_mask[..., None])
        assert out.final_mask.sum() > 0


def test_phone_prefix_stripped_from_output():
    model = tiny(use_phone_cond=True)
    x0 = torch.randint(0, V, (2, 10))
    phone_id = torch.randint(0, 100, (2, 7))
    phone_mask = torch.ones(2, 7, dtype=torch.long)
    phone_mask[1, 5:] = 0
    torch.manual_seed(1)
    out = model(x0, torch.ones(2, 10), phone_id=phone_id, phone_mask=phone_mask)
    assert out.logits.shape == (2, 10, V)
    # Same as running the stack on [cond_mlp(phones) ; xt] by hand and keeping the last 10 outputs.
    torch.manual_seed(1)
    t = torch.rand(2).clamp(1e-5, 1)
    xt = model.forward_diffusion(x0, t)[0]
    est = model.diff_estimator
    full = est(torch.cat([est.cond_mlp(model.phone_emb(phone_id)), xt], 1), t,
               torch.cat([phone_mask.float(), torch.ones(2, 10)], 1))
    torch.testing.assert_close(out.logits, model.to_logit(full[:, 7:]))
    with pytest.raises(ValueError, match="use_phone_cond"):
        tiny()(x0, torch.ones(2, 10), phone_id=phone_id)


def test_fresh_init():
    model = tiny(use_phone_cond=True, ft_type="omni")
    assert (model.phone_emb.weight[1023] == 0).all()
    assert model.cond_adapter.gate_scale.item() == 0
    norm = model.diff_estimator.layers[0].input_layernorm.to_weight
    assert (norm.bias == 0).all() and norm.weight.std().item() == pytest.approx(0.02, rel=0.2)  # gain ~ 0 (docs/reference.md Q1)
    assert model.cond_emb.weight.std().item() == pytest.approx(0.02, rel=0.3)


def test_adapter_forms():
    assert isinstance(tiny(ft_type="se").cond_adapter, SimpleAdapter)
    l2s = tiny(ft_type="l2s").cond_adapter
    assert isinstance(l2s, torch.nn.Sequential) and sorted(k for k, _ in l2s.named_parameters()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert isinstance(tiny(ft_type="l2s", use_zero_gate_adapter=True).cond_adapter, SimpleAdapter)
    assert tiny(ft_type="tts").cond_adapter is None and tiny().cond_adapter is None
    assert isinstance(tiny(ft_type="asr").cond_adapter, SimpleAdapter)  # a new task's name: the zero-gate adapter
    for bad in ("", 3):
        with pytest.raises(ValueError, match="ft_type"):
            tiny(ft_type=bad)
    with pytest.raises(ValueError, match="cond_adapter"):
        tiny().adapter(torch.zeros(1, 3, 8))


def test_zero_gate_adapter_is_noop_at_init():
    model = tiny(ft_type="se")
    x0, x_mask = torch.randint(0, V, (2, 12)), torch.ones(2, 12)
    cond = torch.randn(2, 12, 8)
    torch.manual_seed(3)
    with_cond = model(x0, x_mask, finetune_cond=cond).logits
    torch.manual_seed(3)
    without = model(x0, x_mask).logits
    assert torch.equal(with_cond, without)
    with torch.no_grad():
        model.cond_adapter.gate_scale.fill_(0.5)
    torch.manual_seed(3)
    assert not torch.allclose(model(x0, x_mask, finetune_cond=cond).logits, without)


@pytest.mark.parametrize("zero_init", ["gate", "out"])
def test_fresh_adapter_is_noop_either_way_and_draws_the_same(zero_init):
    model = tiny(ft_type="se", adapter_zero_init=zero_init)
    ref = tiny(ft_type="se")
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert torch.equal(model.cond_adapter.in_linear.weight, ref.cond_adapter.in_linear.weight)  # same random draws
    assert torch.equal(model.cond_emb.weight, ref.cond_emb.weight)
    cond = torch.randn(2, 12, 8)
    assert torch.equal(model.adapter(cond), torch.zeros(2, 12, 32))
    with pytest.raises(ValueError, match="zero_init"):
        tiny(ft_type="se", adapter_zero_init="none")


def adapter_first_grads(zero_init):
    """Gradients of every adapter tensor after one backward of a fresh adapter on a pretrained-like model."""
    model = tiny(ft_type="se", adapter_zero_init=zero_init)
    x0, x_mask = torch.randint(0, V, (2, 12)), torch.ones(2, 12)
    torch.manual_seed(3)
    out = model(x0, x_mask, finetune_cond=torch.randn(2, 12, 8))
    torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), out.x0.flatten()).backward()
    return {k: p.grad for k, p in model.cond_adapter.named_parameters()}


def test_zero_out_adapter_learns_from_the_first_step():
    """With the released zero gate only the gate gets a gradient at first; with zero_init="out" the
    output layer does, a gradient over every one of its weights (why demo fine-tunes use it)."""
    gate = adapter_first_grads("gate")
    assert gate["gate_scale"].abs().item() > 0
    assert all(torch.count_nonzero(gate[k]) == 0 for k in ("in_linear.weight", "out_linear.weight", "out_linear.bias"))
    out = adapter_first_grads("out")
    assert torch.count_nonzero(out["out_linear.weight"]) == out["out_linear.weight"].numel()
    assert torch.count_nonzero(out["in_linear.weight"]) == 0  # its gradient flows through the zero out_linear


def test_gradient_checkpointing_same_loss_and_grads():
    results = []
    for ckpt in (False, True):
        model = tiny(use_phone_cond=True, gradient_checkpointing=ckpt).train()
        torch.manual_seed(5)
        x0 = torch.randint(0, V, (2, 16))
        x_mask = torch.ones(2, 16)
        x_mask[0, 12:] = 0
        out = model(x0, x_mask, phone_id=torch.randint(0, 50, (2, 4)), phone_mask=torch.ones(2, 4))
        m = out.final_mask[..., 0].bool()
        loss = torch.nn.functional.cross_entropy(out.logits[m], x0[m])
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("prompt_len", [0, 5])
@pytest.mark.parametrize("cfg", [0.0, 2.5])
def test_reverse_diffusion_shape_and_range(prompt_len, cfg):
    model = tiny(use_phone_cond=True).eval()
    torch.manual_seed(0)
    prompt = torch.randint(0, V, (2, prompt_len))
    calls = []
    hook = model.to_logit.register_forward_hook(lambda *a: calls.append(1))
    ids = model.reverse_diffusion(prompt, 9, phone_id=torch.randint(0, 50, (2, 4)), n_timesteps=6, cfg=cfg, filter_thres=0.5)
    hook.remove()
    assert ids.shape == (2, 9) and ids.dtype == torch.long
    assert ((ids >= 0) & (ids < V)).all()
    # CFG combines hidden states: one to_logit call per step, with or without guidance.
    assert len(calls) == 6


def test_reverse_diffusion_with_adapter_and_prompt():
    model = tiny(ft_type="vc").eval()
    with torch.no_grad():
        model.cond_adapter.gate_scale.fill_(1.0)
    cond = torch.randn(1, 11, 8)
    ids = model.reverse_diffusion(torch.randint(0, V, (1, 3)), 8, finetune_cond=cond, n_timesteps=4, cfg=1.0)
    assert ids.shape == (1, 8)
    with pytest.raises(ValueError, match="prompt \\+ target"):
        model.reverse_diffusion(torch.randint(0, V, (1, 3)), 8, finetune_cond=cond[:, :8], n_timesteps=4)


def test_cfg_keeps_finetune_cond_for_empty_prompt():
    # Empty prompt, no phones: the unconditional input equals the conditional one only if it keeps
    # the adapter features (docs/reference.md Q8), so CFG must then change nothing at all.
    model = tiny(ft_type="se").eval()
    with torch.no_grad():
        model.cond_adapter.gate_scale.fill_(1.0)
    cond = torch.randn(1, 10, 8)
    runs = []
    for cfg in (0.0, 2.5):
        gen = torch.Generator().manual_seed(7)
        runs.append(model.reverse_diffusion(torch.zeros(1, 0, dtype=torch.long), 10, finetune_cond=cond,
                                            n_timesteps=5, cfg=cfg, filter_thres=0.5, noise=UniformNoise(gen)))
    assert torch.equal(runs[0], runs[1])


def test_replayed_noise_reproduces_generator_run():
    model = tiny(use_phone_cond=True).eval()
    prompt, phones = torch.randint(0, V, (2, 3)), torch.randint(0, 50, (2, 5))
    kw = dict(phone_id=phones, n_timesteps=5, cfg=1.5, filter_thres=0.5)
    recorder = RecordingNoise(torch.Generator().manual_seed(11))
    first = model.reverse_diffusion(prompt, 12, noise=recorder, **kw)
    # Reference order: (b, t, v) sampling draw per step except the last, (b, t) confidence draw per step.
    assert [tuple(u.shape) for u in recorder.draws] == [(2, 12, V), (2, 12)] * 4 + [(2, 12)]
    replay = ReplayNoise(recorder.draws)
    assert torch.equal(model.reverse_diffusion(prompt, 12, noise=replay, **kw), first)
    assert replay.used == len(recorder.draws)
    again = model.reverse_diffusion(prompt, 12, noise=UniformNoise(torch.Generator().manual_seed(11)), **kw)
    assert torch.equal(again, first)


def test_preschedule_mask_indices():
    model = tiny().eval()
    order = torch.tensor([9, 2, 7, 4, 0, 5, 1, 8, 3, 6])
    seen = []
    embed = model.embed_input
    model.embed_input = lambda ids, mask: (seen.append(mask.clone()), embed(ids, mask))[1]
    ids = model.reverse_diffusion(torch.zeros(2, 0, dtype=torch.long), 10, n_timesteps=4, cfg=0.0,
                                  preschedule_mask_indices=order, noise=UniformNoise(torch.Generator().manual_seed(0)))
    assert ids.shape == (2, 10) and ((ids >= 0) & (ids < V)).all()
    assert len(seen) == 4 and seen[0].all()
    for i, mask in enumerate(seen[1:], start=1):
        n_next = math.floor(math.sin(math.pi / 2 * (1 - i / 4)) * 10)  # 9, 7, 3
        expected = torch.zeros(2, 10, dtype=torch.bool)
        expected[:, order[:n_next]] = True
        assert torch.equal(mask, expected), i


LAYOUTS = Path(__file__).resolve().parents[1] / "fixtures" / "layouts"


@pytest.mark.parametrize("layout, kwargs", [
    ("metis_stage1_base__metis_base_model_safetensors", {}),
    ("maskgct_t2s__tts_json", dict(use_phone_cond=True)),
    ("ckpt_full_se__ft", dict(ft_type="se")),
    ("ckpt_full_vc__ft", dict(ft_type="vc")),
    ("ckpt_full_l2s__l2s", dict(ft_type="l2s", cond_dim=768)),
    ("ckpt_full_omni__omni", dict(ft_type="omni", use_phone_cond=True)),
    ("metis_stage1_plain_l2s__base_path_SimpleAdapter", dict(ft_type="l2s", cond_dim=768, use_zero_gate_adapter=True)),
])
def test_published_layouts(layout, kwargs):
    """The full-size model's state_dict has exactly the released files' keys and shapes."""
    expected = {k: v[0] for k, v in json.loads((LAYOUTS / f"{layout}.json").read_text())["tensors"].items()}
    with torch.device("meta"):
        model = MetisStage1(**kwargs)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
