"""Write a golden fixture set in the format of tests/fixtures/golden (docs/reference.md §8) from this
project's own models, with other sizes, inputs, call arguments and seeds than the shipped set.

The outputs are computed here with the arguments this module writes into each JSON, not by the
checkers, so a checker that assumed the shipped set's values (a seed, a step list, a size) fails on
this set. `tests/parity/test_alternative_set.py` runs the checkers on it and on a tampered copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from metis.checkpoints.lora import adapter_state_dict, lora_state_dict, merged_state_dict, wrap_lora
from metis.models.acoustic_codec import CodecDecoder, CodecEncoder
from metis.models.decoding import UniformNoise
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A
from metis.models.semantic_codec import RepCodec

# other sizes than the shipped set (hidden 64 x 2 layers x 4 heads, V 32, cond_dim 16, S2A 3 x 16 codes)
STAGE1 = dict(hidden_size=48, num_layers=3, num_heads=3, cfg_scale=0.2, cond_codebook_size=40, cond_dim=12)
S2A = dict(num_quantizer=4, hidden_size=48, num_layers=2, num_heads=3, codebook_size=20, cfg_scale=0.2,
           mask_layer_schedule="linear", cond_codebook_size=40, cond_dim=48, predict_layer_1=True)


class Recorder(UniformNoise):
    """torch's global RNG (the reference's draws), keeping every draw for the io file."""

    def __init__(self):
        super().__init__()
        self.draws: list[torch.Tensor] = []

    def __call__(self, shape, device):
        self.draws.append(super().__call__(shape, device))
        return self.draws[-1]

    def named(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}noise.{i:03d}.{'sample' if u.dim() == 3 else 'choice'}": u for i, u in enumerate(self.draws)}


def perturb(model: torch.nn.Module, gen: torch.Generator, scale: float = 0.1) -> torch.nn.Module:
    """Every floating parameter plus seeded noise, so zero-init parts (gates, LoRA B, biases) are not trivial."""
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


class Writer:
    """Collects fixtures and writes their files and INDEX.json."""

    def __init__(self, root: Path, seed: int):
        self.root, self.seed, self.index = Path(root), seed, {}
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, meta: dict, weights: dict[str, torch.Tensor], io: dict[str, torch.Tensor],
            extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        files = {"weights": f"{name}.weights.safetensors", "io": f"{name}.io.safetensors"}
        files.update({kind: f"{name}.{kind}.safetensors" for kind in (extra or {})})
        dropped = sorted(k for k, v in weights.items() if v.numel() == 0)
        tensors = {"weights": {k: v for k, v in weights.items() if v.numel()}, "io": io, **(extra or {})}
        for kind, fname in files.items():
            save_file({k: v.detach().clone().contiguous() for k, v in tensors[kind].items()}, str(self.root / fname))
        meta = {**meta, "files": files, "weights_dropped_zero_size": dropped,
                "io_tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in io.items()}}
        (self.root / f"{name}.json").write_text(json.dumps(meta, indent=1))
        self.index[name] = {"json": f"{name}.json", "files": files}

    def finish(self) -> None:
        (self.root / "INDEX.json").write_text(json.dumps({"set": "alternative", "seed": self.seed,
                                                          "fixtures": self.index}, indent=1))


def stage1_model(w: Writer, name: str, config: dict, gen: torch.Generator, *, seeds: dict[str, int],
                 fd: bool = False, phones: bool = False, adapter_dim: int | None = None, fwd_prompt: bool = False):
    """A single-pass fixture: xt, adapter, phone prefix, estimator, logits, and the seeded calls."""
    kwargs = {k: v for k, v in config.items() if k != "ft_cond_dim"}
    model = perturb(MetisStage1(**{**kwargs, "cond_dim": adapter_dim or kwargs["cond_dim"]}), gen).eval()
    b, n, v = 3, 9, config["cond_codebook_size"]
    io = {"in.x0": torch.randint(0, v, (b, n), generator=gen),
          "in.x_mask": (torch.arange(n)[None] < torch.tensor([n, n - 2, n - 3])[:, None]).float(),
          "in.t": torch.rand(b, generator=gen), "in.mask": torch.bernoulli(torch.full((b, n, 1), 0.5), generator=gen)}
    calls = {}
    with torch.no_grad():
        xt = io["out.xt"] = model.embed_input(io["in.x0"], io["in.mask"])
        if adapter_dim:
            io["in.finetune_cond"] = torch.randn(b, n, adapter_dim, generator=gen)
            io["out.adapter"] = model.adapter(io["in.finetune_cond"])
            xt = xt + io["out.adapter"]
        prefix = prefix_mask = None
        if phones:
            p = 5
            pid = torch.randint(0, 300, (b, p), generator=gen)
            pid[1, -2:] = model.phone_pad_id
            io["in.phone_id"], io["in.phone_mask"] = pid, (pid != model.phone_pad_id).float()
            prefix, prefix_mask = model.phone_prefix(pid), io["in.phone_mask"]
            io["out.phone_embedding"] = prefix
            io["out.embeds_empty_prefix"] = model.diff_estimator(xt, io["in.t"], io["in.x_mask"], prefix=prefix[:, :0],
                                                                 prefix_mask=prefix_mask[:, :0])
        io["out.embeds"] = model.diff_estimator(xt, io["in.t"], io["in.x_mask"], prefix=prefix, prefix_mask=prefix_mask)
        io["out.logits"] = model.to_logit(io["out.embeds"])
        if fd:
            io["out.embeds_no_padding"] = model.diff_estimator(xt, io["in.t"], torch.ones(b, n))
            for key, plen in (("fd", None), ("fd2", torch.tensor([3, 0, 2]))):
                io[f"{key}.t"] = torch.rand(b, generator=gen)
                if plen is not None:
                    io[f"{key}.in.prompt_len"] = plen
                torch.manual_seed(seeds[key])
                out = model.forward_diffusion(io["in.x0"], io[f"{key}.t"], prompt_len=plen)
                for field, value in zip(("xt", "t", "mask", "prompt_len", "mask_prob"), out):
                    if field != "t":
                        io[f"{key}.out.{field}"] = value
                calls[f"{key}.*"] = f"torch.manual_seed({seeds[key]}); forward_diffusion(in.x0, {key}.t)"
        if "fwd" in seeds:
            kw = {}
            if phones:
                kw.update(phone_id=io["in.phone_id"], phone_mask=io["in.phone_mask"])
            if adapter_dim:
                kw["finetune_cond"] = io["in.finetune_cond"]
            if fwd_prompt:
                kw["prompt_len"] = io["fwd.in.prompt_len"] = torch.tensor([2, 4, 1])
            torch.manual_seed(seeds["fwd"])
            out = model(io["in.x0"], io["in.x_mask"], **kw)
            io.update({"fwd.out.logits": out.logits, "fwd.out.final_mask": out.final_mask,
                       "fwd.out.prompt_len": out.prompt_len, "fwd.out.mask_prob": out.mask_prob})
            calls["fwd.*"] = f"torch.manual_seed({seeds['fwd']}); model(in.x0, in.x_mask, ...)"
    w.add(name, {"model": "MetisStage1", "config": config, "calls": calls}, dict(model.state_dict()), io)
    return model


def stage1_rd(w: Writer, name: str, model: MetisStage1, config: dict, gen: torch.Generator, seed: int, *, b: int, tp: int,
              target_len: int, args: dict, phones: bool = False, adapter_dim: int | None = None):
    """A reverse-diffusion fixture: recorded uniforms, per-step to_logit outputs, tokens."""
    v = config["cond_codebook_size"]
    io = {}
    prompt = torch.randint(0, v, (b, tp), generator=gen)
    if tp:
        io["in.prompt"] = prompt
    kw = {}
    if phones:
        kw["phone_id"] = io["in.phone_id"] = torch.randint(0, 300, (b, 7), generator=gen)
    if adapter_dim:
        kw["finetune_cond"] = io["in.finetune_cond"] = torch.randn(b, tp + target_len, adapter_dim, generator=gen)
    logs = []
    hook = model.to_logit.register_forward_hook(lambda m, a, out: logs.append(out.detach().clone()))
    rec = Recorder()
    torch.manual_seed(seed)
    try:
        io["out.tokens"] = model.reverse_diffusion(prompt, target_len, noise=rec, **kw, **args)
    finally:
        hook.remove()
    io.update(rec.named())
    io.update({f"log.to_logit.{i:03d}": x for i, x in enumerate(logs)})
    prompt_text = "in.prompt" if tp else f"zeros({b},0)"
    call = (f"reverse_diffusion(prompt={prompt_text}, target_len={target_len}, "
            + ", ".join(f"{k}={val}" for k, val in args.items()) + ")")
    w.add(name, {"model": "MetisStage1", "config": config, "call": call, "seed_set_right_before_call": seed},
          dict(model.state_dict()), io)


def s2a_pair(w: Writer, gen: torch.Generator, seeds: dict[str, int]) -> None:
    model = perturb(MaskGCTS2A(**S2A), gen).eval()
    nq, b, n = S2A["num_quantizer"], 3, 11
    weights = dict(model.state_dict())
    io = {"in.x0": torch.randint(0, S2A["codebook_size"], (b, n, nq), generator=gen),
          "in.cond_code": torch.randint(0, S2A["cond_codebook_size"], (b, n), generator=gen),
          "in.x_mask": (torch.arange(n)[None] < torch.tensor([n, n - 1, n - 4])[:, None]).float(),
          "in.t": torch.rand(b, generator=gen)}
    with torch.no_grad():
        torch.manual_seed(seeds["fd"])
        xt, _, layer, mask, plen, mask_prob = model.forward_diffusion(io["in.x0"], io["in.t"])
        io.update({"fd.out.xt": xt, "fd.out.mask_layer": layer, "fd.out.mask": mask, "fd.out.prompt_len": plen,
                   "fd.out.mask_prob": mask_prob})
        cond = io["out.cond"] = model.cond_emb(io["in.cond_code"])
        io["out.embeds"] = model.diff_estimator(xt, io["in.t"], io["in.x_mask"], cond=cond + model.layer_emb(layer)[:, None])
        io["out.logits"] = model.to_logits[int(layer)](io["out.embeds"])
        for L in range(nq):
            e = model.diff_estimator(xt, io["in.t"], io["in.x_mask"], cond=cond + model.layer_emb.weight[L])
            io[f"out.layer{L}.embeds"], io[f"out.layer{L}.logits"] = e, model.to_logits[L](e)
        torch.manual_seed(seeds["fwd"])
        out = model(io["in.x0"], io["in.x_mask"], cond_code=io["in.cond_code"])
        io.update({"fwd.out.logits": out.logits, "fwd.out.mask_layer": out.mask_layer, "fwd.out.final_mask": out.final_mask,
                   "fwd.out.prompt_len": out.prompt_len, "fwd.out.mask_prob": out.mask_prob})
    calls = {"fd.*": f"torch.manual_seed({seeds['fd']}); forward_diffusion(in.x0, in.t)",
             "fwd.*": f"torch.manual_seed({seeds['fwd']}); model(in.x0, in.x_mask, cond_code=in.cond_code)"}
    w.add("s2a", {"model": "MaskGCT_S2A", "config": S2A, "calls": calls}, weights, io)

    b, p, t = 2, 4, 7
    args = dict(temp=1.2, filter_thres=0.7, n_timesteps=[2, 3, 1, 2], cfg=1.5, rescale_cfg=0.6)
    io = {"in.cond_code": torch.randint(0, S2A["cond_codebook_size"], (b, p + t), generator=gen),
          "in.prompt": torch.randint(0, S2A["codebook_size"], (b, p, nq), generator=gen),
          "in2.gt_code": torch.randint(0, S2A["codebook_size"], (b, t, 1), generator=gen)}
    with torch.no_grad():
        cond = io["in.cond"] = model.cond_emb(io["in.cond_code"])
        for run, prefix, extra in (("out.tokens", "", {}), ("out2.tokens", "run2.", {"cfg": 3.0, "gt_code": io["in2.gt_code"]})):
            rec = Recorder()
            torch.manual_seed(seeds[run])
            io[run] = model.reverse_diffusion(cond, io["in.prompt"], noise=rec, **{**args, **extra})
            io.update(rec.named(prefix))
    listed = ", ".join(f"{k}={v}" for k, v in args.items())
    calls = {"out.tokens": f"torch.manual_seed({seeds['out.tokens']}); reverse_diffusion(cond=cond_emb(in.cond_code), "
                           f"prompt=in.prompt, {listed})",
             "out2.tokens": f"torch.manual_seed({seeds['out2.tokens']}); same with cfg=3.0 and gt_code=in2.gt_code"}
    w.add("rd_s2a", {"model": "MaskGCT_S2A", "config": S2A, "calls": calls}, weights, io)


def lora_fixture(w: Writer, gen: torch.Generator, r: int = 3, alpha: int = 9) -> None:
    config = {**STAGE1, "use_phone_cond": False, "ft_type": "se", "lora_r": r, "lora_alpha": alpha, "lora_scaling": alpha / r}
    kwargs = {k: config[k] for k in ("hidden_size", "num_layers", "num_heads", "cfg_scale", "cond_codebook_size",
                                     "cond_dim", "use_phone_cond", "ft_type")}
    base = perturb(MetisStage1(**{**kwargs, "ft_type": None}), gen)
    model = MetisStage1(**kwargs)
    model.load_state_dict(base.state_dict(), strict=False)
    perturb(model.cond_adapter, gen)
    wrapped = wrap_lora(model, r=r, alpha=alpha).eval()
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    merged = MetisStage1(**kwargs).eval()
    merged.load_state_dict(merged_state_dict(wrapped))
    b, n = 2, 8
    io = {"in.x0": torch.randint(0, STAGE1["cond_codebook_size"], (b, n), generator=gen),
          "in.x_mask": torch.ones(b, n), "in.t": torch.rand(b, generator=gen),
          "in.mask": torch.bernoulli(torch.full((b, n, 1), 0.4), generator=gen),
          "in.finetune_cond": torch.randn(b, n, STAGE1["cond_dim"], generator=gen)}
    with torch.no_grad():
        for m, suffix in ((merged, ""), (wrapped.model, "_unmerged_lora")):
            xt = m.embed_input(io["in.x0"], io["in.mask"])
            adapter = m.cond_adapter(io["in.finetune_cond"])
            embeds = m.diff_estimator(xt + adapter, io["in.t"], io["in.x_mask"])
            io[f"out.embeds{suffix}"] = embeds
            if not suffix:
                io.update({"out.xt": xt, "out.adapter": adapter, "out.logits": m.to_logit(embeds)})
    w.add("metis_se_lora", {"model": "MetisStage1 se, LoRA split", "config": config, "calls": {}}, dict(merged.state_dict()),
          io, extra={"base": dict(base.state_dict()), "adapter": adapter_state_dict(wrapped), "lora": lora_state_dict(wrapped)})


def codecs(w: Writer, gen: torch.Generator) -> None:
    config = dict(codebook_size=24, hidden_size=20, codebook_dim=3, vocos_dim=28, vocos_intermediate_dim=40, vocos_num_layers=3)
    model = perturb(RepCodec(**config), gen, 0.05).eval()
    feat = torch.randn(3, 7, config["hidden_size"], generator=gen)
    with torch.no_grad():
        codes, quantized = model.quantize(feat)
        x_rec, _, all_indices = model(feat)
        io = {"in.feat": feat, "out.encoder": model.encoder(feat.transpose(1, 2)).transpose(1, 2), "out.codes": codes,
              "out.quantized": quantized, "out.x_rec": x_rec, "out.all_indices": all_indices}
    w.add("semantic_codec", {"model": "RepCodec", "config": config}, dict(model.state_dict()), io)

    enc_cfg = dict(d_model=4, up_ratios=[2, 3], out_channels=12, use_tanh=False)
    dec_cfg = dict(in_channels=12, num_quantizers=3, codebook_size=10, codebook_dim=3, vocos_dim=16, vocos_intermediate_dim=32,
                   vocos_num_layers=2, n_fft=24, hop_size=6)
    encoder = perturb(CodecEncoder(**enc_cfg), gen, 0.05).eval()
    decoder = perturb(CodecDecoder(**dec_cfg), gen, 0.05).eval()
    io = {}
    with torch.no_grad():
        for j, length in enumerate((60, 67)):
            wav = io[f"in{j}.wav"] = torch.randn(2 - j, 1, length, generator=gen) * 0.3
            z = encoder(wav)
            quantized, codes, _, _, all_quantized = decoder.quantizer(z)
            emb = decoder.vq2emb(codes)
            io.update({f"out{j}.encoder": z, f"out{j}.quantized": quantized, f"out{j}.codes": codes,
                       f"out{j}.all_quantized": all_quantized, f"out{j}.vq2emb": emb,
                       f"out{j}.vq2emb_n1": decoder.vq2emb(codes, n_quantizers=1), f"out{j}.wav": decoder(emb),
                       f"out{j}.wav_from_quantized": decoder(quantized), f"out{j}.codes_BTN": codes.permute(1, 2, 0)})
    weights = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
               **{f"decoder.{k}": v for k, v in decoder.state_dict().items()}}
    w.add("acoustic_codec", {"model": "acoustic codec", "config": {"encoder": enc_cfg, "decoder": dec_cfg}}, weights, io)


def make_set(root: Path, seed: int = 4321) -> Path:
    """Every fixture kind of the shipped set, at other sizes and seeds; returns root."""
    w = Writer(root, seed)
    gen = torch.Generator().manual_seed(seed)
    s = seed * 10
    base_cfg = {**STAGE1, "use_phone_cond": False, "ft_type": None}
    tts_cfg = {**STAGE1, "use_phone_cond": True}
    se_cfg = {**STAGE1, "use_phone_cond": False, "ft_type": "se"}
    l2s_cfg = {**STAGE1, "use_phone_cond": False, "ft_type": "l2s", "ft_cond_dim": 10}
    stage1_model(w, "metis_base", base_cfg, gen, seeds={"fd": s + 1, "fd2": s + 2, "fwd": s + 3}, fd=True)
    tts = stage1_model(w, "metis_tts", tts_cfg, gen, seeds={"fwd": s + 4}, phones=True)
    se = stage1_model(w, "metis_se_adapter", se_cfg, gen, seeds={"fwd": s + 5}, adapter_dim=STAGE1["cond_dim"], fwd_prompt=True)
    stage1_model(w, "metis_l2s_adapter", l2s_cfg, gen, seeds={}, adapter_dim=10)
    args = dict(temp=0.8, filter_thres=0.7, n_timesteps=6, cfg=2.0, rescale_cfg=0.6)
    stage1_rd(w, "rd_tts", tts, tts_cfg, gen, s + 6, b=3, tp=3, target_len=9, args=args, phones=True)
    stage1_rd(w, "rd_se", se, se_cfg, gen, s + 7, b=2, tp=0, target_len=11, args={**args, "cfg": 0.0, "n_timesteps": 3},
              adapter_dim=STAGE1["cond_dim"])
    stage1_rd(w, "rd_vc", se, se_cfg, gen, s + 8, b=1, tp=4, target_len=6, args={**args, "cfg": 1.2, "n_timesteps": 5},
              adapter_dim=STAGE1["cond_dim"])
    s2a_pair(w, gen, {"fd": s + 9, "fwd": s + 10, "out.tokens": s + 11, "out2.tokens": s + 12})
    lora_fixture(w, gen)
    codecs(w, gen)
    w.finish()
    return Path(root)
