"""The one masked decoder: per-row decoding is reference-exact at batch 1 and batch-independent, coupled
decoding is the reference's batch coupling (docs/reference.md Q6), fast mode is close."""

import pytest
import torch

from metis.models.decoding import DecodeConfig, ReplayNoise, UniformNoise, masked_decode
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A
from tests.inference.conftest import perturb

V = 32


def gen(seed):
    return UniformNoise(torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tts_model():
    return perturb(MetisStage1(64, 2, 4, cond_codebook_size=V, use_phone_cond=True, ft_type="tts"), 0, 0.05).eval()


@pytest.fixture(scope="module")
def se_model():
    return perturb(MetisStage1(64, 2, 4, cond_codebook_size=V, ft_type="se", cond_dim=16), 1, 0.05).eval()


@pytest.fixture(scope="module")
def s2a_model():
    return perturb(MaskGCTS2A(num_quantizer=4, hidden_size=64, num_layers=2, num_heads=4, codebook_size=V,
                              cond_codebook_size=V), 2, 0.05).eval()


@pytest.mark.parametrize("cfg", [0.0, 2.5])
def test_stage1_batch_of_one_matches_reference_reverse_diffusion(tts_model, se_model, cfg):
    torch.manual_seed(0)
    prompt, phones, fc = torch.randint(0, V, (1, 7)), torch.randint(0, 100, (1, 5)), torch.randn(1, 20, 16)
    settings = DecodeConfig(6, 0.9, 0.8, cfg, 0.75)
    for model, kw in ((tts_model, {"phone_id": phones}), (se_model, {"finetune_cond": fc})):
        ref = model.reverse_diffusion(prompt, 13, n_timesteps=6, cfg=cfg, rescale_cfg=0.75, filter_thres=0.8, noise=gen(5), **kw)
        for fast in (False, True):
            out = model.reverse_diffusion_rows([prompt[0]], [13], settings, noises=[gen(5)], fast=fast,
                                phones=[phones[0]] if "phone_id" in kw else None,
                                finetune_conds=[fc[0]] if "finetune_cond" in kw else None)
            assert torch.equal(out[0], ref[0]), (model.ft_type, cfg, fast)


def test_s2a_batch_of_one_matches_reference_reverse_diffusion(s2a_model):
    torch.manual_seed(1)
    sem, prompt, gt = torch.randint(0, V, (1, 20)), torch.randint(0, V, (1, 6, 4)), torch.randint(0, V, (1, 14, 1))
    steps = [5, 3, 1, 1]
    ref = s2a_model.reverse_diffusion(s2a_model.cond_emb(sem), prompt, n_timesteps=steps, cfg=2.5, rescale_cfg=0.75,
                                      filter_thres=0.8, gt_code=gt, noise=gen(3))
    out = s2a_model.reverse_diffusion_rows([sem[0]], [prompt[0]], [DecodeConfig(s, 1.5, 0.8, 2.5, 0.75) for s in steps],
                     noises=[gen(3)], gt_codes=[gt[0]])
    assert torch.equal(out[0], ref[0])


def test_equal_length_rows_batched_equal_alone(tts_model):
    """docs/reference.md Q6 not reproduced: per-row CFG std and n_next, so a batch of equal-length rows gives each its own result."""
    torch.manual_seed(2)
    a, b = torch.randint(0, V, (6,)), torch.randint(0, V, (6,))
    ph = torch.randint(0, 100, (4,))
    settings = DecodeConfig(5, 0.9, 0.8, 2.5, 0.75)
    one = [tts_model.reverse_diffusion_rows([p], [12], settings, noises=[gen(s)], phones=[ph])[0] for p, s in ((a, 1), (b, 2))]
    both = tts_model.reverse_diffusion_rows([a, b], [12, 12], settings, noises=[gen(1), gen(2)], phones=[ph, ph])
    assert all(torch.equal(x, y) for x, y in zip(one, both))
    assert not torch.equal(both[0], both[1])  # the rows really differ


@pytest.mark.parametrize("fast", [False, True])
def test_stage1_batched_equals_one_by_one_with_padding(tts_model, se_model, fast):
    """Rows of different prompt, phone and target lengths: each row as if alone (same noise per row)."""
    torch.manual_seed(3)
    prompts = [torch.randint(0, V, (n,)) for n in (0, 5, 9)]
    targets = [11, 4, 16]
    phones = [torch.randint(0, 100, (n,)) for n in (3, 8, 5)]
    conds = [torch.randn(p.numel() + t, 16) for p, t in zip(prompts, targets)]
    settings = DecodeConfig(6, 0.9, 0.8, 2.5, 0.75)
    for model, kw in ((tts_model, {"phones": phones}), (se_model, {"finetune_conds": conds})):
        one = [model.reverse_diffusion_rows([prompts[i]], [targets[i]], settings, noises=[gen(10 + i)],
                             **{k: [v[i]] for k, v in kw.items()}, fast=fast)[0] for i in range(3)]
        both = model.reverse_diffusion_rows(prompts, targets, settings, noises=[gen(10 + i) for i in range(3)], fast=fast, **kw)
        for i in range(3):
            assert torch.equal(one[i], both[i]), (model.ft_type, i)


def test_s2a_batched_equals_one_by_one_with_padding(s2a_model):
    torch.manual_seed(4)
    sems = [torch.randint(0, V, (n,)) for n in (9, 17, 12)]
    prompts = [torch.randint(0, V, (n, 4)) for n in (0, 6, 3)]
    cfgs = [DecodeConfig(s, 1.5, 0.8, 2.5, 0.75) for s in (4, 3, 1, 1)]
    one = [s2a_model.reverse_diffusion_rows([sems[i]], [prompts[i]], cfgs, noises=[gen(20 + i)])[0] for i in range(3)]
    both = s2a_model.reverse_diffusion_rows(sems, prompts, cfgs, noises=[gen(20 + i) for i in range(3)])
    for i in range(3):
        assert both[i].shape == (sems[i].numel() - prompts[i].shape[0], 4)
        assert torch.equal(one[i], both[i]), i


def test_fast_mode_agrees_with_faithful_mode_in_float32(tts_model, s2a_model):
    """Fast mode (batched CFG over padded rows, cached conditions, top-k-only sampling) changes only the
    rounding: on CPU float32 at least 95% of the tokens agree with the faithful mode (measured: 100%)."""
    torch.manual_seed(5)
    prompts = [torch.randint(0, V, (n,)) for n in (4, 8)]
    phones = [torch.randint(0, 100, (n,)) for n in (6, 3)]
    settings = DecodeConfig(8, 0.9, 0.8, 2.5, 0.75)
    runs = {fast: tts_model.reverse_diffusion_rows(prompts, [20, 14], settings, noises=[gen(1), gen(2)], phones=phones, fast=fast)
            for fast in (False, True)}
    agree = torch.cat([a == b for a, b in zip(runs[False], runs[True])]).float().mean()
    cfgs = [DecodeConfig(s, 1.5, 0.8, 2.5, 0.75) for s in (6, 3, 1, 1)]
    codes = {fast: s2a_model.reverse_diffusion_rows([torch.cat([p, r]) for p, r in zip(prompts, runs[False])],
                              [torch.randint(0, V, (p.numel(), 4), generator=torch.Generator().manual_seed(0)) for p in prompts],
                              cfgs, noises=[gen(3), gen(4)], fast=fast) for fast in (False, True)}
    agree_s2a = torch.cat([(a == b).flatten() for a, b in zip(codes[False], codes[True])]).float().mean()
    assert agree >= 0.95 and agree_s2a >= 0.95, (agree, agree_s2a)


def test_per_row_early_stop_keeps_lengths(tts_model):
    """docs/reference.md Q7 per row: a 1-frame target stops early; the longer row in its batch still decodes fully."""
    settings = DecodeConfig(4, 0.9, 0.8, 0.0, 0.75)
    p = torch.randint(0, V, (3,))
    ph = torch.randint(0, 100, (2,))
    one = [tts_model.reverse_diffusion_rows([p], [t], settings, noises=[gen(t)], phones=[ph])[0] for t in (1, 10)]
    both = tts_model.reverse_diffusion_rows([p, p], [1, 10], settings, noises=[gen(1), gen(10)], phones=[ph, ph])
    assert [x.numel() for x in both] == [1, 10]
    assert torch.equal(one[0], both[0]) and torch.equal(one[1], both[1])


class Recorder(UniformNoise):
    def __init__(self, seed):
        super().__init__(torch.Generator().manual_seed(seed))
        self.draws = []

    def __call__(self, shape, device):
        self.draws.append(super().__call__(shape, device))
        return self.draws[-1]


@pytest.mark.parametrize("cfg", [0.0, 2.5])
def test_coupled_batch_reproduces_the_reference_coupling(tts_model, cfg):
    """reverse_diffusion couples its rows through the CFG std (docs/reference.md Q6); the per-row decoder
    does not. Each row alone records its uniforms; the coupled batch replays them stacked."""
    torch.manual_seed(6)
    prompts, ph = torch.randint(0, V, (2, 5)), torch.randint(0, 100, (2, 4))
    kw = dict(n_timesteps=6, cfg=cfg, rescale_cfg=0.75, filter_thres=0.8)
    recs = [Recorder(7 + r) for r in range(2)]
    alone = [tts_model.reverse_diffusion(prompts[r:r + 1], 12, phone_id=ph[r:r + 1], noise=recs[r], **kw)[0] for r in range(2)]
    rows = tts_model.reverse_diffusion_rows(list(prompts), [12, 12], DecodeConfig(6, 0.9, 0.8, cfg, 0.75),
                                            noises=[UniformNoise(torch.Generator().manual_seed(7 + r)) for r in range(2)],
                                            phones=list(ph))
    assert all(torch.equal(a, r) for a, r in zip(alone, rows))
    # the first step's logits (all frames masked, nothing sampled yet): coupled rows see one batch std
    logits = []
    hook = tts_model.to_logit.register_forward_hook(lambda m, a, out: logits.append(out))
    try:
        for r in range(2):
            tts_model.reverse_diffusion(prompts[r:r + 1], 12, phone_id=ph[r:r + 1], **{**kw, "n_timesteps": 1})
        tts_model.reverse_diffusion(prompts, 12, phone_id=ph, **{**kw, "n_timesteps": 1})
    finally:
        hook.remove()
    first_alone, first_coupled = torch.cat(logits[:2]), logits[2]
    if cfg == 0:
        assert torch.allclose(first_alone, first_coupled, atol=1e-6)
    else:
        assert (first_alone - first_coupled).abs().max() > 1e-4
    stacked = ReplayNoise([torch.cat(pair) for pair in zip(*(r.draws for r in recs))])
    coupled = tts_model.reverse_diffusion(prompts, 12, phone_id=ph, noise=stacked, **kw)
    if cfg == 0:  # without guidance nothing couples rows of one length: the stacked draws give the alone tokens
        assert all(torch.equal(coupled[r], alone[r]) for r in range(2))


def test_masked_decode_switches_are_checked():
    fn = lambda ids, m, t: torch.zeros(*ids.shape, 4)  # noqa: E731
    with pytest.raises(ValueError, match="rows of one length"):
        masked_decode(fn, [3, 4], 2, temp=1.0, filter_thres=0.5, noise=None, device=torch.device("cpu"), coupled=True)
    with pytest.raises(ValueError, match="one noise source per row"):
        masked_decode(fn, [3, 4], 2, temp=1.0, filter_thres=0.5, noise=gen(0), device=torch.device("cpu"), coupled=False)
    with pytest.raises(ValueError, match="preschedule"):
        masked_decode(fn, [3, 3], 2, temp=1.0, filter_thres=0.5, noise=[gen(0), gen(1)], device=torch.device("cpu"),
                      coupled=False, preschedule_mask_indices=torch.arange(3))


def _tts_and_s2a_runs(tts_model, s2a_model, fast):
    """Stage 1 (phones, rows of their own lengths, CFG) then S2A (4 layers, CFG) of two rows."""
    torch.manual_seed(5)
    prompts = [torch.randint(0, V, (n,)) for n in (4, 8)]
    phones = [torch.randint(0, 100, (n,)) for n in (6, 3)]
    sem = tts_model.reverse_diffusion_rows(prompts, [20, 14], DecodeConfig(8, 0.9, 0.8, 2.5, 0.75),
                                           noises=[gen(1), gen(2)], phones=phones, fast=fast)
    codes = s2a_model.reverse_diffusion_rows(
        [torch.cat([p, r]) for p, r in zip(prompts, sem)],
        [torch.randint(0, V, (p.numel(), 4), generator=torch.Generator().manual_seed(0)) for p in prompts],
        [DecodeConfig(s, 1.5, 0.8, 2.5, 0.75) for s in (6, 3, 1, 1)], noises=[gen(3), gen(4)], fast=fast)
    return sem, codes


@pytest.mark.parametrize("buckets", [(16, 64), (8,)])
def test_bucketed_fast_mode_gives_the_unbucketed_tokens(tts_model, s2a_model, buckets):
    """Static shape buckets pad the CFG batch (to 64, or to multiples of 8) and mask the padding: on CPU
    float32 every stage-1 and S2A token equals the unbucketed fast mode's."""
    from metis.models.decoding import FastDecoding

    plain = _tts_and_s2a_runs(tts_model, s2a_model, True)
    bucketed = _tts_and_s2a_runs(tts_model, s2a_model, FastDecoding(buckets=buckets))
    for a, b in zip(plain[0] + plain[1], bucketed[0] + bucketed[1]):
        assert torch.equal(a, b)


def test_bucket_length():
    from metis.models.decoding import bucket_length

    assert [bucket_length(n, (16, 64)) for n in (1, 16, 17, 64, 65, 129)] == [16, 16, 64, 64, 128, 192]


def test_bucketed_pass_runs_on_the_bucket_shape(tts_model):
    """The estimator really sees the padded (2b, bucket) batch: the shape is static across lengths."""
    from metis.models.decoding import FastDecoding

    seen = []
    hook = tts_model.diff_estimator.layers[0].register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[:2])))
    try:
        for n in (5, 11):
            tts_model.reverse_diffusion_rows([torch.arange(3)], [n], DecodeConfig(2, 0.9, 0.8, 2.5, 0.75), noises=[gen(0)],
                                             fast=FastDecoding(buckets=(32,)))
    finally:
        hook.remove()
    assert set(seen) == {(2, 32)}


def test_cpu_bf16_precision_runs_the_estimator_in_bf16(tts_model):
    """precision="bf16" autocasts the estimator on a CPU too ("auto" keeps fp32 there); the tokens stay valid ids."""
    from metis.models.decoding import FastDecoding

    dtypes = {}
    for precision in ("auto", "bf16"):
        seen = []
        hook = tts_model.diff_estimator.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
        try:
            out = tts_model.reverse_diffusion_rows([torch.arange(3)], [9], DecodeConfig(3, 0.9, 0.8, 2.5, 0.75),
                                                   noises=[gen(0)], fast=FastDecoding(precision=precision))[0]
        finally:
            hook.remove()
        dtypes[precision] = set(seen)
        assert out.shape == (9,) and int(out.min()) >= 0 and int(out.max()) < V
    assert dtypes == {"auto": {torch.float32}, "bf16": {torch.bfloat16}}
    with pytest.raises(ValueError, match="precision"):
        FastDecoding(precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_capture_replays_the_eager_bucketed_pass(tts_model):
    """On CUDA the bucketed pass is captured once per shape and replayed: the same tokens as without graphs
    (fp32), and one graph for two requests of different lengths in one bucket."""
    from metis.models.decoding import _GRAPHS, FastDecoding

    model = MetisStage1(64, 2, 4, cond_codebook_size=V, use_phone_cond=True, ft_type="tts")
    model.load_state_dict(tts_model.state_dict())
    model = model.cuda().eval()
    runs = {}
    for graphs in (False, True):
        fast = FastDecoding(precision="fp32", buckets=(32,), cuda_graphs=graphs)
        runs[graphs] = [model.reverse_diffusion_rows([torch.arange(3)], [n], DecodeConfig(4, 0.9, 0.8, 2.5, 0.75),
                                                     noises=[gen(n)], fast=fast)[0].cpu() for n in (5, 11)]
    assert all(torch.equal(a, b) for a, b in zip(runs[False], runs[True]))
    assert len(_GRAPHS[model.diff_estimator][1]) == 1
