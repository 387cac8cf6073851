"""Unit tests for the MaskGCT S2A model (metis/models/s2a.py) on tiny configs."""

import math

import pytest
import torch
import torch.nn.functional as F

from metis.models.decoding import ReplayNoise, cfg_combine, gumbel, top_k_filter
from metis.models.s2a import MaskGCTS2A

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, codebook_size=8, cond_codebook_size=10, cond_dim=32)


def tiny(num_quantizer=3, **kw):
    torch.manual_seed(0)
    return MaskGCTS2A(num_quantizer=num_quantizer, **{**TINY, **kw})


def codes(b, t, nq, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["codebook_size"], (b, t, nq), generator=g)


def test_linear_layer_weights():
    assert torch.allclose(tiny(4).layer_weights(), torch.tensor([4.0, 3, 2, 1]) / 10)
    assert torch.allclose(tiny(4, predict_layer_1=False).layer_weights(), torch.tensor([0.0, 4, 3, 2]) / 9)
    assert torch.allclose(tiny(4, mask_layer_schedule="uniform", predict_layer_1=False).layer_weights(),
                          torch.tensor([0.0, 1, 1, 1]) / 3)
    cos = torch.tensor([math.cos(q / 4 * math.pi / 2) for q in range(4)])
    assert torch.allclose(tiny(4, mask_layer_schedule="cosine").layer_weights(), cos / cos.sum())


@pytest.mark.parametrize("schedule", ["linear", "uniform", "cosine"])
def test_full_model_never_trains_layer_0(schedule):
    model = tiny(4, predict_layer_1=False, mask_layer_schedule=schedule)
    torch.manual_seed(3)
    draws = torch.cat([model.sample_mask_layer() for _ in range(3000)])
    counts = torch.bincount(draws, minlength=4).float()
    assert counts[0] == 0
    # Empirical frequencies follow the schedule (3000 draws: std of a frequency <= 0.01).
    assert torch.allclose(counts / counts.sum(), model.layer_weights(), atol=0.04)


def test_unknown_schedule_and_untrainable_config_are_errors():
    with pytest.raises(ValueError, match="mask_layer_schedule"):
        tiny(mask_layer_schedule="exp")
    with pytest.raises(ValueError, match="predict_layer_1"):
        tiny(1, predict_layer_1=False)


def test_embed_input_is_the_layer_sum():
    model = tiny(3)
    x0 = codes(2, 6, 3)
    mask = torch.tensor([[0, 0, 1, 0, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float32)[..., None]
    prompt_len = torch.tensor([2, 1])
    m_tok = model.mask_emb.weight[0]
    e = [model.token_emb[q](x0[:, :, q]) for q in range(3)]
    xt = model.embed_input(x0, mask, torch.tensor([1]), prompt_len)
    for i in range(2):
        for j in range(6):
            want = e[0][i, j] + (m_tok if mask[i, j, 0] else e[1][i, j]) + (e[2][i, j] if j < prompt_len[i] else m_tok)
            assert torch.allclose(xt[i, j], want, atol=1e-6), (i, j)


def test_prompt_frames_never_masked_and_every_row_masked():
    model = tiny(3)
    x0 = codes(3, 12, 3)
    saw_prompt = False
    for seed in range(40):
        torch.manual_seed(seed)
        t = torch.rand(3).clamp(1e-5, 1.0) * 0.3  # low mask ratios exercise the at-least-one fix-up
        xt, _, layer, mask, prompt_len, mask_prob = model.forward_diffusion(x0, t)
        is_prompt = torch.arange(12)[None, :] < prompt_len[:, None]
        assert mask.shape == (3, 12, 1) and layer.shape == (1,)
        assert (mask[..., 0][is_prompt] == 0).all()
        assert (mask.sum(dim=(1, 2)) >= 1).all()
        assert ((prompt_len >= 0) & (prompt_len < 6)).all()  # drawn below t // 2
        assert torch.allclose(mask_prob, torch.sin(t * math.pi / 2))
        assert torch.allclose(xt, model.embed_input(x0, mask, layer, prompt_len))
        saw_prompt |= bool((prompt_len > 0).any())
    assert saw_prompt


def test_final_mask_excludes_padding():
    model = tiny(3)
    x0 = codes(2, 10, 3)
    x_mask = torch.ones(2, 10)
    x_mask[1, 6:] = 0
    cond_code = torch.randint(0, 10, (2, 10))
    for seed in range(10):
        torch.manual_seed(seed)
        out = model(x0, x_mask, cond_code=cond_code)
        assert out.logits.shape == (2, 10, TINY["codebook_size"])
        assert (out.final_mask[1, 6:] == 0).all()
        # Same draws again: final_mask is the corruption mask restricted to valid frames.
        torch.manual_seed(seed)
        t = torch.rand(2).clamp(1e-5, 1.0)
        _, _, layer, mask, _, _ = model.forward_diffusion(x0, t)
        assert torch.equal(out.final_mask, mask * x_mask[..., None])
        assert torch.equal(out.mask_layer, layer)


def test_forward_rejects_bad_shapes():
    model = tiny(3)
    with pytest.raises(ValueError, match="num_quantizer"):
        model(codes(1, 8, 2), torch.ones(1, 8), cond_code=torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="cond_code"):
        model(codes(1, 8, 3), torch.ones(1, 8), cond_code=torch.zeros(1, 7, dtype=torch.long))


@pytest.mark.parametrize("prompt_len", [0, 3])
def test_reverse_diffusion_shapes(prompt_len):
    model = tiny(3).eval()
    cond = model.cond_emb(torch.randint(0, 10, (2, prompt_len + 5)))
    prompt = codes(2, prompt_len, 3)
    out = model.reverse_diffusion(cond, prompt, filter_thres=0.75, n_timesteps=[3, 2, 1], cfg=1.0)
    assert out.shape == (2, 5, 3) and out.dtype == torch.long
    assert ((out >= 0) & (out < TINY["codebook_size"])).all()


def test_reverse_diffusion_keeps_gt_layers():
    model = tiny(3).eval()
    cond = model.cond_emb(torch.randint(0, 10, (1, 9)))
    gt = codes(1, 6, 2, seed=5)
    out = model.reverse_diffusion(cond, codes(1, 3, 3), filter_thres=0.75, n_timesteps=[4, 4, 2], gt_code=gt)
    assert torch.equal(out[:, :, :2], gt)
    with pytest.raises(ValueError, match="gt_code"):
        model.reverse_diffusion(cond, codes(1, 3, 3), n_timesteps=[1, 1, 1], gt_code=codes(1, 5, 1))


def test_cfg_unconditional_pass_drops_the_prompt():
    model = tiny(3).eval()
    p, n = 3, 5
    cond = model.cond_emb(torch.randint(0, 10, (1, p + n)))
    prompt = codes(1, p, 3)
    est_calls, head_inputs = [], []
    h1 = model.diff_estimator.register_forward_hook(
        lambda m, args, kwargs, out: est_calls.append((args[0], kwargs.get("cond"), out)), with_kwargs=True)
    hooks = [h1] + [head.register_forward_hook(lambda m, args, out, q=q: head_inputs.append((q, args[0])))
                    for q, head in enumerate(model.to_logits)]
    n_timesteps = [2, 2, 1]
    model.reverse_diffusion(cond, prompt, filter_thres=0.75, n_timesteps=n_timesteps, cfg=2.0, rescale_cfg=0.6)
    for h in hooks:
        h.remove()
    # One conditional + one unconditional estimator pass per step; one head call per step.
    assert len(est_calls) == 2 * len(head_inputs) == 2 * sum(n_timesteps)
    prompt_emb = sum(model.token_emb[q](prompt[:, :, q]) for q in range(3))
    for i, (q, head_in) in enumerate(head_inputs):
        (x_c, cond_c, e_c), (x_u, cond_u, e_u) = est_calls[2 * i], est_calls[2 * i + 1]
        # the condition goes through cond_mlp once per layer and is added to the estimator input
        layer_cond = cond + model.layer_emb.weight[q]
        cm, cm_u = model.diff_estimator.cond_mlp(layer_cond), model.diff_estimator.cond_mlp(layer_cond[:, p:])
        assert cond_c is None and cond_u is None
        assert x_c.shape[1] == p + n and torch.allclose(x_c[:, :p], prompt_emb + cm[:, :p], atol=1e-6)
        assert x_u.shape[1] == n and torch.allclose(x_u, x_c[:, p:] - cm[:, p:] + cm_u, atol=1e-6)
        assert torch.allclose(head_in, cfg_combine(e_c[:, p:], e_u, 2.0, 0.6), atol=1e-6)
    # cfg = 0 runs the conditional pass only.
    est_calls.clear()
    h1 = model.diff_estimator.register_forward_hook(
        lambda m, args, kwargs, out: est_calls.append((args[0], kwargs.get("cond"), out)), with_kwargs=True)
    model.reverse_diffusion(cond, prompt, filter_thres=0.75, n_timesteps=n_timesteps, cfg=0)
    h1.remove()
    assert len(est_calls) == sum(n_timesteps) and all(x.shape[1] == p + n for x, _, _ in est_calls)


def test_single_step_layer_uses_gumbel_tau_0_2():
    model = tiny(1).eval()
    cond = model.cond_emb(torch.randint(0, 10, (1, 7)))
    n, v = 7, TINY["codebook_size"]
    with torch.no_grad():
        model.to_logits[0].weight.mul_(100)  # logit gaps of O(1), so the temperature matters
        # All frames masked, no finer layers, t = 1: the logits the single step sees.
        x = model.mask_emb.weight[0].expand(1, n, -1)
        logits = top_k_filter(model.layer_logits(x, torch.ones(1), cond, 0), 0.5)
    differs_from_temp_rule = differs_from_argmax = False
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        u, u_choice = torch.rand(1, n, v, generator=g), torch.rand(1, n, generator=g)
        out = model.reverse_diffusion(cond, codes(1, 0, 1), filter_thres=0.5, n_timesteps=[1], cfg=0,
                                      noise=ReplayNoise([u, u_choice]))
        assert torch.equal(out[..., 0], (logits / 0.2 + gumbel(u)).argmax(-1))
        differs_from_temp_rule |= not torch.equal(out[..., 0], (logits / 1.5 + gumbel(u)).argmax(-1))
        differs_from_argmax |= not torch.equal(out[..., 0], logits.argmax(-1))
    # The checks above can tell τ = 0.2 from τ = temp·t and from a plain argmax.
    assert differs_from_temp_rule and differs_from_argmax


def test_gradient_checkpointing_gives_identical_gradients():
    x0 = codes(2, 8, 3)
    x_mask = torch.ones(2, 8)
    cond_code = torch.randint(0, 10, (2, 8))
    grads = []
    for ckpt in (False, True):
        model = tiny(3, num_layers=2, gradient_checkpointing=ckpt).train()
        torch.manual_seed(11)
        out = model(x0, x_mask, cond_code=cond_code)
        target = x0[:, :, int(out.mask_layer)]
        ce = F.cross_entropy(out.logits.transpose(1, 2), target, reduction="none")[..., None]
        ((ce * out.final_mask).sum() / out.final_mask.sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert any(k.startswith("diff_estimator.layers.1.") for k in grads[0])
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-7), k


def test_state_dict_holds_zero_size_key():
    model = tiny(3)
    sd = model.state_dict()
    assert tuple(sd["diff_estimator.embed_tokens.weight"].shape) == (0, 256)
    for key in ["layer_emb.weight", "mask_emb.weight", "cond_emb.weight", "token_emb.2.weight", "to_logits.2.bias",
                "diff_estimator.cond_mlp.0.weight"]:
        assert key in sd, key
    assert tuple(sd["layer_emb.weight"].shape) == (3, 32) and tuple(sd["mask_emb.weight"].shape) == (1, 32)
    # A released file carries the key, so a strict load without it must fail.
    sd.pop("diff_estimator.embed_tokens.weight")
    with pytest.raises(RuntimeError, match="embed_tokens"):
        tiny(3).load_state_dict(sd, strict=True)
