"""Parity checkers for Metis stage 1 / MaskGCT T2S (single passes, seeded corruption, reverse diffusion)."""

from __future__ import annotations

import re

import torch

from metis.models.decoding import ReplayNoise
from metis.models.metis_stage1 import MetisStage1
from tests.parity.fixture import Fixture


def build(fx: Fixture) -> MetisStage1:
    """The model of the fixture's config, with its weights loaded strictly."""
    cfg = fx.config
    model = MetisStage1(
        hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"], num_heads=cfg["num_heads"],
        cond_codebook_size=cfg["cond_codebook_size"], cfg_scale=cfg["cfg_scale"],
        use_phone_cond=cfg["use_phone_cond"], ft_type=cfg.get("ft_type"),
        cond_dim=cfg.get("ft_cond_dim", cfg["cond_dim"]),  # the adapter input size
    )
    state = fx.weights()
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = set(fx.meta.get("weights_dropped_zero_size", []))
    bad_missing = [k for k in missing if not (k in allowed and model.state_dict()[k].numel() == 0)]
    assert not bad_missing and not unexpected, f"{fx.name}: missing {bad_missing}, unexpected {unexpected}"
    return model.eval()


def check_single_pass(fx: Fixture, model: MetisStage1) -> None:
    """out.xt / out.adapter / out.phone_embedding / out.embeds / out.logits from the recorded inputs."""
    x0, x_mask, t = fx["in.x0"], fx["in.x_mask"], fx["in.t"]
    with torch.no_grad():
        xt = model.embed_input(x0, fx["in.mask"])
        fx.check("out.xt", xt)
        if "in.finetune_cond" in fx.io:
            adapter = model.adapter(fx["in.finetune_cond"])
            fx.check("out.adapter", adapter)
            xt = xt + adapter
        prefix = prefix_mask = None
        if "in.phone_id" in fx.io:
            prefix, prefix_mask = model.phone_prefix(fx["in.phone_id"]), fx["in.phone_mask"]
            fx.check("out.phone_embedding", prefix)
        embeds = model.diff_estimator(xt, t, x_mask, prefix=prefix, prefix_mask=prefix_mask)
        fx.check("out.embeds", embeds)
        fx.check("out.logits", model.to_logit(embeds))
        if "out.embeds_no_padding" in fx.io:
            fx.check("out.embeds_no_padding", model.diff_estimator(xt, t, torch.ones_like(x_mask)))
        if "out.embeds_empty_prefix" in fx.io:
            empty = prefix[:, :0]
            fx.check("out.embeds_empty_prefix", model.diff_estimator(xt, t, x_mask, prefix=empty, prefix_mask=prefix_mask[:, :0]))


def check_forward_diffusion(fx: Fixture, model: MetisStage1, prefix: str) -> None:
    """fd.* / fd2.*: seeded corruption; xt must also equal the assembly from the recorded mask."""
    key = f"{prefix}.*"
    if f"{prefix}.t" not in fx.io:
        return
    prompt_len = fx.io.get(f"{prefix}.in.prompt_len")
    torch.manual_seed(fx.seed(key))
    with torch.no_grad():
        xt, t, mask, plen, mask_prob = model.forward_diffusion(fx["in.x0"], fx[f"{prefix}.t"], prompt_len=prompt_len)
        expected_mask = fx[f"{prefix}.out.mask"]
        # Strong invariant, independent of the RNG: xt is the assembly from the recorded mask.
        torch.testing.assert_close(model.embed_input(fx["in.x0"], expected_mask), fx[f"{prefix}.out.xt"], atol=1e-5, rtol=0)
    fx.check(f"{prefix}.t", t)  # forward_diffusion hands its t back unchanged
    fx.check(f"{prefix}.out.mask", mask)
    fx.check(f"{prefix}.out.xt", xt)
    fx.check(f"{prefix}.out.prompt_len", plen)
    fx.check(f"{prefix}.out.mask_prob", mask_prob)


def check_forward(fx: Fixture, model: MetisStage1) -> None:
    """fwd.*: a seeded model(...) call with the fixture's phones / finetune_cond / prompt_len."""
    if "fwd.out.logits" not in fx.io:
        return
    kwargs = {}
    if "in.phone_id" in fx.io:
        kwargs.update(phone_id=fx["in.phone_id"], phone_mask=fx["in.phone_mask"])
    if "in.finetune_cond" in fx.io:
        kwargs["finetune_cond"] = fx["in.finetune_cond"]
    if "fwd.in.prompt_len" in fx.io:
        kwargs["prompt_len"] = fx["fwd.in.prompt_len"]
    torch.manual_seed(fx.seed("fwd.*"))
    with torch.no_grad():
        out = model(fx["in.x0"], fx["in.x_mask"], **kwargs)
    fx.check("fwd.out.logits", out.logits)
    fx.check("fwd.out.final_mask", out.final_mask)
    fx.check("fwd.out.prompt_len", out.prompt_len)
    fx.check("fwd.out.mask_prob", out.mask_prob)


def check_model(fx: Fixture) -> None:
    model = build(fx)
    check_single_pass(fx, model)
    check_forward_diffusion(fx, model, "fd")
    check_forward_diffusion(fx, model, "fd2")
    check_forward(fx, model)


RD_ARGS = ("temp", "filter_thres", "n_timesteps", "cfg", "rescale_cfg")


def check_reverse_diffusion(fx: Fixture) -> None:
    """out.tokens with the recorded uniforms replayed, and every per-step to_logit output; every
    argument (and the seed of the weak-oracle run) from the JSON's call."""
    model = build(fx)
    args = fx.literal_args("call")
    assert set(RD_ARGS) | {"target_len"} <= set(args), f"{fx.name}: call lacks {sorted(set(RD_ARGS) - set(args))}"
    kwargs = {k: args[k] for k in RD_ARGS}
    if "in.prompt" in fx.io:
        prompt = fx["in.prompt"]
    else:  # "prompt=zeros(B,0)": an empty prompt of the recorded batch size
        m = re.search(r"prompt=zeros\((\d+),\s*(\d+)\)", fx.call("call"))
        assert m, f"{fx.name}: no in.prompt and no prompt=zeros(B,0) in the call"
        prompt = torch.zeros(int(m.group(1)), int(m.group(2)), dtype=torch.long)
    inputs = dict(phone_id=fx.io.get("in.phone_id"), finetune_cond=fx.io.get("in.finetune_cond"))
    logs = []
    hook = model.to_logit.register_forward_hook(lambda mod, a, out: logs.append(out.detach().clone()))
    noise = ReplayNoise(fx.prefixed("noise.").values())
    try:
        tokens = model.reverse_diffusion(prompt, int(args["target_len"]), **inputs, **kwargs, noise=noise)
    finally:
        hook.remove()
    assert noise.used == len(noise.draws), f"{fx.name}: used {noise.used} of {len(noise.draws)} recorded draws"
    expected_logs = fx.prefixed("log.to_logit.")
    assert len(logs) == len(expected_logs), f"{fx.name}: {len(logs)} to_logit calls, recorded {len(expected_logs)}"
    for (name, _), actual in zip(expected_logs.items(), logs):
        fx.check(name, actual)
    fx.check("out.tokens", tokens)
    # Weak oracle too: torch's own RNG, seeded as recorded, is drawn in the reference's order and shapes.
    torch.manual_seed(fx.seed("call"))
    fx.check("out.tokens", model.reverse_diffusion(prompt, int(args["target_len"]), **inputs, **kwargs))


CHECKERS = {
    "metis_base": check_model,
    "metis_tts": check_model,
    "metis_se_adapter": check_model,
    "metis_l2s_adapter": check_model,
    "rd_tts": check_reverse_diffusion,
    "rd_se": check_reverse_diffusion,
    "rd_vc": check_reverse_diffusion,
}
