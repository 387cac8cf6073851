"""Real-time factor of inference per task, faithful versus fast mode, at tiny, mid and released model sizes.

    python benchmarks/bench_inference.py                      # tiny: all tasks; mid: tts (~3 min on 1 shared core)
    python benchmarks/bench_inference.py --sizes mid --tasks all --threads 2 --device cuda

Times stage 1 + S2A (1 layer, then full) + codec decoding of one request with the published decoding
settings (tts 25 steps cfg 2.5; se 10; tse 10; vc 20 cfg 1; l2s 25; S2A [40] and [40,16,1x10] cfg
2.5), on random weights: prompt 2 s, target 2 s (tts, vc, tse, l2s) or 4 s (se), batch 1. Tokenisation
of the inputs (w2v-BERT, codec encoder) is not included: it runs once per input, not per step.
RTF = compute seconds / output audio seconds. Agreement = fraction of equal generated semantic and
acoustic tokens between the two modes (same seed; both draw noise from CPU generators here, while the
pipeline's fast mode draws on the model's device by default, which changes the random stream on GPU).

Sizes: tiny = stage 1 / S2A hidden 64 x 2 layers; mid = hidden 512 x 8 layers x 8 heads, 8192 semantic
codes, 12 x 1024 acoustic codes; both with a small Vocos decoder (128 x 4 layers). released = the
released sizes: stage 1 1536 x 16 layers x 16 heads, S2A 1024 x 16 x 16, 8192 semantic codes, and the
codec decoder at its default (released) size (256 channels, Vocos 512 x 30 layers):

    python benchmarks/bench_inference.py --sizes released --tasks tts --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from metis import tasks as registry
from metis.inference.generate import Item, generate
from metis.inference.tasks import S2A_1LAYER_DEFAULT, S2A_FULL_DEFAULT, STAGE1_DEFAULTS, TASKS
from metis.models.acoustic_codec import CodecDecoder
from metis.models.metis_stage1 import MetisStage1
from metis.models.s2a import MaskGCTS2A

SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4, vocab=1024),
    "mid": dict(hidden=512, layers=8, heads=8, vocab=8192),
    # stage 1 1536 x 16, S2A 1024 x 16 (s2a_* override hidden/layers/heads), codec decoder at its defaults
    "released": dict(hidden=1536, layers=16, heads=16, vocab=8192, s2a_hidden=1024, s2a_layers=16, s2a_heads=16,
                     decoder={}),
}
DECODER = dict(in_channels=32, num_quantizers=12, codebook_size=1024, codebook_dim=8, vocos_dim=128,
               vocos_intermediate_dim=384, vocos_num_layers=4, n_fft=1920, hop_size=480)


class _Decoder:
    """The acoustic half of AcousticTokenizer (decode only), on a small random Vocos decoder."""

    num_quantizers = 12

    def __init__(self, device, config: dict | None = None):
        self.device = device
        self.decoder = CodecDecoder(**(DECODER if config is None else config)).eval().to(device)

    @torch.no_grad()
    def decode(self, codes):
        return self.decoder(self.decoder.vq2emb(codes.long().permute(2, 0, 1)))[:, 0]


def build(size: str, device) -> tuple[dict, MaskGCTS2A, MaskGCTS2A]:
    s = SIZES[size]
    torch.manual_seed(0)
    common = dict(hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"], cond_codebook_size=s["vocab"])
    # one model per kind of condition the registry's tasks use (the audio tasks share one: same shapes)
    kinds = {}
    stage1 = {}
    for task in TASKS:
        spec = registry.get(task)
        kwargs = spec.model_kwargs(feature_dim=1024)
        key = (spec.input, kwargs.get("cond_dim"), spec.phones)
        kinds.setdefault(key, MetisStage1(**common, **kwargs))
        stage1[task] = kinds[key]
    s2a = dict(hidden_size=s.get("s2a_hidden", s["hidden"]), num_layers=s.get("s2a_layers", s["layers"]),
               num_heads=s.get("s2a_heads", s["heads"]), codebook_size=1024, cond_codebook_size=s["vocab"])
    return stage1, MaskGCTS2A(num_quantizer=1, **s2a), MaskGCTS2A(num_quantizer=12, predict_layer_1=False, **s2a)


def make_item(task: str, vocab: int, prompt_frames: int, target_frames: int) -> Item:
    g = torch.Generator().manual_seed(1)
    spec = registry.get(task)
    tp = prompt_frames if spec.prompt else 0
    ids = torch.randint(0, vocab, (tp,), generator=g)
    acoustic = torch.randint(0, 1024, (tp + (1 if tp else 0), 12), generator=g)  # one frame longer (docs/reference.md Q10)
    phones = torch.randint(0, 300, (4 * (tp + target_frames) // 10,), generator=g) if spec.phones else None
    cond = None
    if spec.adapter:
        cond = torch.randn(tp + target_frames, spec.cond_dim or 1024, generator=g)
    return Item(request=0, chunk=0, start=0, task=task, prompt_ids=ids, target_len=target_frames, acoustic_prompt=acoustic,
                keep_prompt=spec.prompt, phones=phones, finetune_cond=cond, seed=7, stage1=STAGE1_DEFAULTS[task],
                s2a_1layer=S2A_1LAYER_DEFAULT, s2a_full=S2A_FULL_DEFAULT)


def decode_once(item: Item, stage1, s1, sf, decoder: _Decoder, fast: bool):
    """One request through the one generation chain -> (seconds, generated semantic ids, codes, wav).
    Noise comes from CPU generators in both modes, so agreement measures the arithmetic, not the RNG."""
    device = decoder.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate([item], stage1, s1, sf, decode=decoder.decode, fast=fast, noise_device="cpu")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out.semantic[0][item.prompt_ids.numel():].cpu(), out.codes[0].cpu(), out.wavs[0]


def run(size: str, tasks, device, prompt_s: float, target_s: float) -> list[dict]:
    # on a GPU, build (and randomly initialise) the models there: the released sizes take minutes on a few CPU cores
    with torch.device(device) if device.type == "cuda" else contextlib.nullcontext():
        stage1, s1, sf = build(size, device)
        decoder = _Decoder(device, SIZES[size].get("decoder"))
    for model in (*stage1.values(), s1, sf):
        model.to(device).eval().requires_grad_(False)
    rows = []
    for task in tasks:
        target = int(target_s * 50) * (1 if registry.get(task).prompt else 2)  # unprompted: the whole length is generated
        item = make_item(task, SIZES[size]["vocab"], int(prompt_s * 50), target)
        out = {}
        for fast in (False, True):
            decode_once(item, stage1[task], s1, sf, decoder, fast)  # warm-up (allocations, lazy init); tiny only matters on GPU
            t, sem, codes, wav = decode_once(item, stage1[task], s1, sf, decoder, fast)
            out[fast] = (t, sem, codes, wav.shape[-1] / 24000)
        (t_a, sem_a, codes_a, audio), (t_b, sem_b, codes_b, _) = out[False], out[True]
        rows.append(dict(size=size, task=task, audio_s=audio, faithful_rtf=t_a / audio, fast_rtf=t_b / audio,
                         speedup=t_a / t_b, sem_agree=(sem_a == sem_b).float().mean().item(),
                         ac_agree=(codes_a == codes_b).float().mean().item()))
        r = rows[-1]
        print(f"{size:5s} {task:4s} audio {audio:5.2f} s | faithful RTF {r['faithful_rtf']:7.3f} | fast RTF {r['fast_rtf']:7.3f} "
              f"| speed-up x{r['speedup']:.2f} | agreement semantic {r['sem_agree']:.3f} acoustic {r['ac_agree']:.3f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=list(SIZES))
    ap.add_argument("--tasks", nargs="+", default=None, help="tasks (default: all for tiny, tts for mid); all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    ap.add_argument("--prompt-seconds", type=float, default=2.0)
    ap.add_argument("--target-seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {args.threads} thread(s), torch {torch.__version__}")
    for size in args.sizes:
        tasks = args.tasks or (list(TASKS) if size == "tiny" else ["tts"])
        if tasks == ["all"]:
            tasks = list(TASKS)
        run(size, tasks, device, args.prompt_seconds, args.target_seconds)


if __name__ == "__main__":
    main()
