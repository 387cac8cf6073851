"""Packing. `packing="utterance"`: a padded batch trained as its packed utterances is, row for row,
the computation of each utterance alone in a batch of one (fp32, tight tolerance), for stage-1
pre-training, S2A and the fine-tuning conditions (phone prefix, adapter features, given prompts).
`packing="compute"`: the padded batch's own maths (the reference), without computing the padding."""

import pytest
import torch
import torch.nn.functional as F

from metis.lightning.metrics import masked_token_loss
from metis.models.llama_nar import AdaptiveRMSNorm, LlamaNAR, Packed
from metis.models.metis_stage1 import MetisStage1, per_utterance_prompt_len
from metis.models.s2a import MaskGCTS2A

V = 32
LENGTHS = [37, 12, 25, 30]  # padded to 37: rows 1-3 carry padding
TOL = dict(rtol=1e-5, atol=1e-5)


def stage1(**kw) -> MetisStage1:
    torch.manual_seed(0)
    net = MetisStage1(hidden_size=32, num_layers=2, num_heads=4, cond_codebook_size=V, cond_dim=8, packing="utterance",
                      norm_init="unit", **kw)
    return net.eval()  # no dropout anywhere; eval only pins the mode


def padded_tokens(lengths, vocab, *extra) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    n = max(lengths)
    x0 = torch.randint(0, vocab, (len(lengths), n, *extra), generator=g)
    mask = (torch.arange(n)[None] < torch.tensor(lengths)[:, None]).float()
    return x0, mask


def alone_loss(logits_rows, targets_rows, mask_rows) -> torch.Tensor:
    """Mean CE over the masked frames of all utterances, each computed alone."""
    picked = torch.cat([l[m] for l, m in zip(logits_rows, mask_rows)])
    gold = torch.cat([t[m] for t, m in zip(targets_rows, mask_rows)])
    return F.cross_entropy(picked, gold)


def check_stage1(net, x0, x_mask, phone_id=None, phone_lens=None, cond=None, prompt_len=None):
    torch.manual_seed(11)
    out = net(x0, x_mask, phone_id=phone_id,
              phone_mask=None if phone_lens is None else (torch.arange(phone_id.shape[1])[None] < torch.tensor(phone_lens)[:, None]).float(),
              finetune_cond=cond, prompt_len=prompt_len)
    masked = out.final_mask[..., 0].bool()
    assert not (masked & (x_mask == 0)).any(), "packing never masks padding"
    assert (out.logits[x_mask == 0] == 0).all(), "no head compute on padding"
    rows_logits, rows_t, rows_m = [], [], []
    for i, n in enumerate(x_mask.sum(1).long().tolist()):
        assert 0 <= int(out.prompt_len[i]) < n
        assert masked[i, :n].any()
        xt = net.embed_input(x0[i:i + 1, :n], masked[i:i + 1, :n])
        ph = None if phone_id is None else phone_id[i:i + 1, :phone_lens[i]]
        f = None if cond is None else cond[i:i + 1, :n]
        alone = net.logits(xt, out.t[i:i + 1], torch.ones(1, n), phone_id=ph, finetune_cond=f)[0]
        torch.testing.assert_close(out.logits[i, :n], alone, **TOL)
        rows_logits.append(alone), rows_t.append(x0[i, :n]), rows_m.append(masked[i, :n])
    loss, _ = masked_token_loss(out.logits, x0, out.final_mask)
    torch.testing.assert_close(loss, alone_loss(rows_logits, rows_t, rows_m), **TOL)
    return out


def test_stage1_pretraining_packed_equals_alone():
    x0, x_mask = padded_tokens(LENGTHS, V)
    check_stage1(stage1(), x0, x_mask)


def test_finetune_conditions_packed_equal_alone():
    """tts: a padded phone prefix (each utterance's frames follow its own phones); se-like adapter
    features; prompt lengths given by the task's conditioner."""
    x0, x_mask = padded_tokens(LENGTHS, V)
    phone_lens = [9, 3, 6, 1]
    phones = torch.randint(0, 100, (len(LENGTHS), max(phone_lens)))
    check_stage1(stage1(ft_type="tts", use_phone_cond=True, phone_vocab_size=128, phone_pad_id=127),
                 x0, x_mask, phone_id=phones, phone_lens=phone_lens)
    net = stage1(ft_type="se")
    with torch.no_grad():
        net.cond_adapter.gate_scale.fill_(0.7)  # an opened gate: the features matter
    cond = torch.randn(len(LENGTHS), max(LENGTHS), 8)
    check_stage1(net, x0, x_mask, cond=cond, prompt_len=torch.tensor([5, 0, 7, 2]))


def test_s2a_packed_equals_alone():
    torch.manual_seed(0)
    net = MaskGCTS2A(num_quantizer=3, hidden_size=32, num_layers=2, num_heads=4, codebook_size=V, cond_codebook_size=V,
                     packing="utterance", norm_init="unit", mask_layer_schedule="uniform").eval()
    x0, x_mask = padded_tokens(LENGTHS, V, 3)
    sem = torch.randint(0, V, x0.shape[:2])
    torch.manual_seed(5)
    out = net(x0, x_mask, sem)
    assert out.mask_layer.shape == (len(LENGTHS),)
    masked = out.final_mask[..., 0].bool()
    assert not (masked & (x_mask == 0)).any()
    rows = ([], [], [])
    for i, n in enumerate(LENGTHS):
        layer = int(out.mask_layer[i])
        xt = net.embed_input(x0[i:i + 1, :n], out.final_mask[i:i + 1, :n], layer, out.prompt_len[i:i + 1])
        alone = net.layer_logits(xt, out.t[i:i + 1], net.cond_emb(sem[i:i + 1, :n]), layer)[0]
        torch.testing.assert_close(out.logits[i, :n], alone, **TOL)
        for acc, v in zip(rows, (alone, x0[i, :n, layer], masked[i, :n])):
            acc.append(v)
    target = x0.gather(-1, out.mask_layer[:, None, None].expand(-1, x0.shape[1], 1))[..., 0]
    loss, _ = masked_token_loss(out.logits, target, out.final_mask)
    torch.testing.assert_close(loss, alone_loss(*rows), **TOL)


def test_packed_compute_equals_padded_computation(monkeypatch):
    """packing="compute" is the padded (reference) computation on every valid frame, with a padded
    phone prefix too (docs/reference.md Q19 positions kept); only the work on padding goes. A batch without padding
    calls SDPA without a mask."""
    torch.manual_seed(0)
    est = LlamaNAR(32, 2, 4, use_cond_mlp=True).eval()
    with torch.no_grad():  # sharp attention, so that positions matter
        for layer in est.layers:
            layer.self_attn.q_proj.weight.mul_(8), layer.self_attn.k_proj.weight.mul_(8)
    x, valid = torch.randn(4, 37, 32), padded_tokens(LENGTHS, V)[1]
    prefix, prefix_mask = torch.randn(4, 6, 32), (torch.arange(6)[None] < torch.tensor([6, 2, 4, 0])[:, None]).float()
    t = torch.rand(4)
    for kw in ({}, {"prefix": prefix, "prefix_mask": prefix_mask}):
        est.packing = "off"
        ref = est(x, t, valid, **kw)
        est.packing = "compute"
        got = est(x, t, valid, **kw)
        torch.testing.assert_close(got[valid.bool()], ref[valid.bool()], **TOL)
        assert (got[valid == 0] == 0).all()
    est.packing = "utterance"  # positions restart per utterance: with a padded prefix the frames move
    moved = est(x, t, valid, prefix=prefix, prefix_mask=prefix_mask)[1, :12] - ref[1, :12]
    assert moved.abs().max() > 10 * TOL["atol"]  # RoPE is relative: only the phone-to-frame distances changed
    masks = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: masks.append(k.get("attn_mask")) or sdpa(*a, **k))
    for packing in ("off", "compute"):
        est.packing = packing
        est(x, t, torch.ones(4, 37))
    assert masks == [None] * 4  # 2 layers x 2 runs


def test_packed_layout_round_trip():
    valid = padded_tokens(LENGTHS, V)[1].bool()
    assert torch.equal(Packed.of(valid, utterance_positions=False).positions, Packed.of(valid).positions)  # right padding
    p = Packed.of(valid)
    assert p.lengths == tuple(LENGTHS) and p.max_len == 37 and p.cu_seqlens.tolist() == [0, 37, 49, 74, 104]
    assert p.positions.tolist() == sum((list(range(n)) for n in LENGTHS), [])
    x = torch.randn(4, 37, 5)
    assert torch.equal(p.unpack(p.pack(x), 4, 37), x * valid[..., None])


def test_per_utterance_prompt_lengths_follow_each_length():
    lengths = torch.tensor([40, 10, 200])
    torch.manual_seed(0)
    draws = torch.stack([per_utterance_prompt_len(lengths, 0.0, 0.4) for _ in range(500)])
    low, high = torch.clamp(lengths // 4, max=5), (lengths * 0.4).long()
    assert (draws >= low).all() and (draws < high).all()
    assert (draws.max(0).values == high - 1).all() and (draws.min(0).values == low).all()
    torch.manual_seed(0)
    dropped = torch.stack([per_utterance_prompt_len(lengths, 0.5, 0.4) for _ in range(500)])
    rate = (dropped == 0).float().mean().item()
    assert 0.4 < rate < 0.6, rate  # dropout is drawn per utterance
    with pytest.raises(ValueError, match="too short"):
        per_utterance_prompt_len(torch.tensor([2]), 0.0, 0.4)


def test_bf16_adaptive_norm_without_fp32_copy_within_tolerance():
    torch.manual_seed(0)
    norm = AdaptiveRMSNorm(64)
    x, c = torch.randn(2, 50, 64) * 3, torch.randn(2, 64)
    ref = norm(x, c)
    got = norm.to(torch.bfloat16)(x.bfloat16(), c.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


def test_fast_cfg_pass_runs_packed(monkeypatch):
    """Fast decoding's one 2b-row CFG pass: the unconditional rows are shorter, their padding is not
    computed (every SDPA call unmasked, one per utterance) and each row equals its own pass."""
    from metis.models.decoding import guided_passes

    torch.manual_seed(0)
    est = LlamaNAR(32, 2, 4).eval()  # packing="off": the call asks for packing itself
    x_c, x_u = torch.randn(2, 20, 32), torch.randn(2, 12, 32)
    m_c, m_u = torch.ones(2, 20), torch.ones(2, 12)
    want_c, want_u = est(x_c, torch.full((2,), 0.5), m_c), est(x_u, torch.full((2,), 0.5), m_u)
    masks = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: masks.append(k.get("attn_mask")) or sdpa(*a, **k))
    e_c, e_u = guided_passes(est, x_c, m_c, x_u, m_u, 0.5, fast=True)
    torch.testing.assert_close(e_c, want_c, **TOL)
    torch.testing.assert_close(e_u, want_u, **TOL)
    assert masks == [None] * (2 * 4)  # 2 layers x 4 utterances, no mask, no padded keys
