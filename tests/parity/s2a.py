"""Parity checkers for the MaskGCT S2A fixtures `s2a` and `rd_s2a` (docs/reference.md §3, §8)."""

from __future__ import annotations

import torch

from metis.models.decoding import ReplayNoise
from metis.models.s2a import MaskGCTS2A
from tests.parity.fixture import Fixture

CONFIG_KEYS = ("num_quantizer", "hidden_size", "num_layers", "num_heads", "codebook_size", "cfg_scale",
               "mask_layer_schedule", "cond_codebook_size", "cond_dim", "predict_layer_1")


def build_model(fx: Fixture) -> MaskGCTS2A:
    """The fixture's model with its weights loaded strictly; zero-size keys the file drops are refilled (docs/reference.md Q14)."""
    model = MaskGCTS2A(**{k: fx.config[k] for k in CONFIG_KEYS}).eval()
    weights = fx.weights()
    own = model.state_dict()
    for key in fx.meta.get("weights_dropped_zero_size", []):
        assert key in own, f"{fx.name}: dropped key {key} is not in the model's state_dict"
        assert own[key].numel() == 0, f"{fx.name}: dropped key {key} is not zero-size in the model: {tuple(own[key].shape)}"
        assert key not in weights, f"{fx.name}: {key} listed as dropped but present"
        weights[key] = torch.empty_like(own[key])
    model.load_state_dict(weights, strict=True)
    return model


def check_s2a(fx: Fixture) -> None:
    model = build_model(fx)
    x0, x_mask, t, cond_code = fx["in.x0"], fx["in.x_mask"], fx["in.t"], fx["in.cond_code"]
    nq = fx.config["num_quantizer"]
    with torch.no_grad():
        # Deterministic part first: xt assembled from the recorded (layer, mask, prompt_len).
        layer_rec = fx["fd.out.mask_layer"]
        xt_rec = model.embed_input(x0, fx["fd.out.mask"], layer_rec, fx["fd.out.prompt_len"])
        fx.check("fd.out.xt", xt_rec)

        # Seeded forward_diffusion: same RNG draws as the reference.
        torch.manual_seed(fx.seed("fd.*"))
        xt, t_out, mask_layer, mask, prompt_len, mask_prob = model.forward_diffusion(x0, t)
        fx.check("fd.out.mask_layer", mask_layer)
        fx.check("fd.out.mask", mask)
        fx.check("fd.out.prompt_len", prompt_len)
        fx.check("fd.out.mask_prob", mask_prob)
        fx.check("fd.out.xt", xt)
        assert torch.equal(t_out, t)

        cond = model.cond_emb(cond_code)
        fx.check("out.cond", cond)
        layer = int(layer_rec)
        embeds = model.diff_estimator(xt_rec, t, x_mask, cond=cond + model.layer_emb(layer_rec)[:, None])
        fx.check("out.embeds", embeds)
        fx.check("out.logits", model.to_logits[layer](embeds))
        fx.check("out.logits", model.layer_logits(xt_rec, t, cond, layer, x_mask))
        for L in range(nq):
            e = model.diff_estimator(xt_rec, t, x_mask, cond=cond + model.layer_emb.weight[L])
            fx.check(f"out.layer{L}.embeds", e)
            fx.check(f"out.layer{L}.logits", model.to_logits[L](e))

        torch.manual_seed(fx.seed("fwd.*"))
        out = model(x0, x_mask, cond_code=cond_code)
        fx.check("fwd.out.logits", out.logits)
        fx.check("fwd.out.mask_layer", out.mask_layer)
        fx.check("fwd.out.final_mask", out.final_mask)
        fx.check("fwd.out.prompt_len", out.prompt_len)
        fx.check("fwd.out.mask_prob", out.mask_prob)
        assert torch.equal(out.x0, x0)


def check_rd_s2a(fx: Fixture) -> None:
    """Both recorded runs: every argument and seed from the JSON's call descriptions; run 2 is run 1's
    call with the arguments it names changed ("same with cfg=... and gt_code=in2.gt_code")."""
    model = build_model(fx)
    cond = model.cond_emb(fx["in.cond_code"]).detach()
    assert (cond - fx["in.cond"]).abs().max() <= 1e-6, "rd_s2a: cond_emb(in.cond_code) != in.cond"
    prompt = fx["in.prompt"]
    names = ("temp", "filter_thres", "n_timesteps", "cfg", "rescale_cfg")
    run1 = {k: v for k, v in fx.literal_args("out.tokens").items() if k in names}
    run2 = {**run1, **{k: v for k, v in fx.literal_args("out2.tokens").items() if k in names}}
    assert set(run1) == set(names), f"{fx.name}: out.tokens call lacks {sorted(set(names) - set(run1))}"
    gt = fx["in2.gt_code"]

    noise = ReplayNoise(fx.prefixed("noise.").values())
    fx.check("out.tokens", model.reverse_diffusion(cond, prompt, noise=noise, **run1))
    assert noise.used == len(noise.draws), f"rd_s2a run 1 used {noise.used} of {len(noise.draws)} recorded draws"

    noise2 = ReplayNoise(fx.prefixed("run2.noise.").values())
    tokens2 = model.reverse_diffusion(cond, prompt, gt_code=gt, noise=noise2, **run2)
    fx.check("out2.tokens", tokens2)
    assert noise2.used == len(noise2.draws), f"rd_s2a run 2 used {noise2.used} of {len(noise2.draws)} recorded draws"
    assert torch.equal(tokens2[:, :, : gt.shape[-1]], gt)

    # Weak oracle: torch's global RNG, seeded as recorded, drawn in the same order and shapes.
    torch.manual_seed(fx.seed("out.tokens"))
    fx.check("out.tokens", model.reverse_diffusion(cond, prompt, **run1))
    torch.manual_seed(fx.seed("out2.tokens"))
    fx.check("out2.tokens", model.reverse_diffusion(cond, prompt, gt_code=gt, **run2))


CHECKERS = {"s2a": check_s2a, "rd_s2a": check_rd_s2a}
