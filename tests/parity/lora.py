"""Parity of the LoRA loading path: base + adapter + LoRA files -> load_split -> merged MetisStage1."""

import torch

from metis.checkpoints.lora import load_split
from tests.parity.fixture import Fixture

MODEL_KEYS = ("hidden_size", "num_layers", "num_heads", "cfg_scale", "cond_codebook_size", "cond_dim",
              "use_phone_cond", "ft_type")


def _outputs(model, fx: Fixture) -> dict[str, torch.Tensor]:
    """The fixture's single-pass calls on a plain (or LoRA-injected) MetisStage1."""
    xt = model.embed_input(fx["in.x0"], fx["in.mask"])
    adapter = model.cond_adapter(fx["in.finetune_cond"])
    embeds = model.diff_estimator(xt + adapter, fx["in.t"], fx["in.x_mask"])
    return {"xt": xt, "adapter": adapter, "embeds": embeds, "logits": model.to_logit(embeds)}


@torch.no_grad()
def check_metis_se_lora(fx: Fixture) -> None:
    cfg = fx.config
    kwargs = {k: cfg[k] for k in MODEL_KEYS}
    files = (fx.files["base"], fx.files["adapter"], fx.files["lora"])

    merged = load_split(*files, kwargs, r=cfg["lora_r"], alpha=cfg["lora_alpha"]).eval()
    expected = fx.weights()
    got = merged.state_dict()
    assert set(got) == set(expected), f"merged keys differ: {sorted(set(got) ^ set(expected))}"
    for key, value in expected.items():
        err = (got[key] - value).abs().max().item() if value.numel() else 0.0
        assert err <= 1e-5, f"merged weight {key}: max abs error {err:.3g}"

    out = _outputs(merged, fx)
    for name in ("xt", "adapter", "embeds", "logits"):
        fx.check(f"out.{name}", out[name])

    unmerged = load_split(*files, kwargs, r=cfg["lora_r"], alpha=cfg["lora_alpha"], merge=False).eval()
    assert abs(unmerged.peft_config["default"].lora_alpha / unmerged.peft_config["default"].r - cfg["lora_scaling"]) < 1e-12
    fx.check("out.embeds_unmerged_lora", _outputs(unmerged.model, fx)["embeds"])


CHECKERS = {"metis_se_lora": check_metis_se_lora}
