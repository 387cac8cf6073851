"""benchmarks/reference_arm.py (the reference's training computation that bench_speed.py times as
"reference") reproduces the reference implementation's own golden fixture: a faithful copy, not a strawman."""

from __future__ import annotations

import torch

from tests.bench_scripts import load_benchmark
from tests.parity.fixture import Fixture


def test_reference_arm_matches_the_golden_metis_base_fixture():
    fx = Fixture.load("metis_base")
    cfg = fx.config
    arm = load_benchmark("reference_arm").ReferenceStage1(cfg["hidden_size"], cfg["num_layers"], cfg["num_heads"], cfg["cond_codebook_size"],
                                      cfg_scale=cfg["cfg_scale"])
    arm.load_state_dict(fx.weights(), strict=True)
    arm.eval()
    with torch.no_grad():
        xt = arm.embed(fx["in.x0"], fx["in.mask"])
        fx.check("out.xt", xt)
        embeds = arm.diff_estimator(xt, fx["in.t"], fx["in.x_mask"])  # the fixture's x_mask has padding
        fx.check("out.embeds", embeds)
        fx.check("out.logits", arm.to_logit(embeds))
        fx.check("out.embeds_no_padding", arm.diff_estimator(xt, fx["in.t"], torch.ones_like(fx["in.x_mask"])))
        torch.manual_seed(fx.seed("fwd.*"))  # the seeded training forward: the same draws in the same order
        logits, final_mask = arm(fx["in.x0"], fx["in.x_mask"])
    fx.check("fwd.out.logits", logits)
    fx.check("fwd.out.final_mask", final_mask)
