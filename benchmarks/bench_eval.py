"""CPU throughput of each eval metric, in seconds of compute per minute of audio.

    python benchmarks/bench_eval.py                 # all metrics that can run here, 60 s of audio
    python benchmarks/bench_eval.py --metrics pesq,dnsmos --seconds 30 --utterance 6

The audio is real speech from ../shared/audio (LibriTTS clips tiled to ``--utterance`` seconds) when it
exists, else a generated speech-like signal; intrusive metrics compare it with a noisy copy. The first
call of each metric (model loading, JIT) is timed separately as "load".
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metis.audio import Audio, read, resample
from metis.eval.metrics import METRIC_NAMES, MetricOptions, build_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "audio"


def utterances(total_s: float, utt_s: float, sr: int = 24000) -> tuple[list[np.ndarray], list[str], str]:
    clips = sorted(SHARED.glob("libritts_*.wav"))
    if clips:
        data = [read(c) for c in clips]
        texts = [c.with_suffix(".txt").read_text().strip() for c in clips]
        source = f"{len(clips)} LibriTTS clips from {SHARED}"
    else:
        t = np.arange(int(4 * sr)) / sr
        data = [((0.3 * np.sin(2 * np.pi * 140 * t) * np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None))
                 .astype(np.float32), sr)]
        texts = [""]
        source = "a generated harmonic signal (no ../shared/audio)"
    out, out_texts = [], []
    n = max(1, round(total_s / utt_s))
    for i in range(n):
        x, r = data[i % len(data)]
        x = resample(x, r, sr)
        reps = int(np.ceil(utt_s * sr / len(x)))
        out.append(np.tile(x, reps)[: int(utt_s * sr)])
        out_texts.append(" ".join([texts[i % len(texts)]] * reps))
    return out, out_texts, source


def random_nisqa(path: Path) -> Path:
    """A NISQA checkpoint with random weights and NISQA v2.0's published hyper-parameters: same compute
    as the real model, for timing only (its scores mean nothing)."""
    from torchmetrics.functional.audio.nisqa import _NISQADIM

    args = {"ms_n_fft": 4096, "ms_hop_length": 0.01, "ms_win_length": 0.02, "ms_n_mels": 48, "ms_fmax": 20000,
            "ms_seg_length": 15, "ms_seg_hop_length": 4, "ms_max_segments": 1300, "cnn_c_out_1": 16,
            "cnn_c_out_2": 32, "cnn_c_out_3": 64, "cnn_kernel_size": [3, 3], "cnn_dropout": 0.2,
            "cnn_pool_1": [24, 7], "cnn_pool_2": [12, 5], "cnn_pool_3": [6, 3], "td_sa_d_model": 64,
            "td_sa_nhead": 1, "td_sa_h": 64, "td_sa_num_layers": 2, "td_sa_dropout": 0.1, "pool_att_h": 128,
            "pool_att_dropout": 0.1}
    torch.save({"args": args, "model_state_dict": _NISQADIM(args).state_dict()}, path)
    return path


def random_wavlm_tdnn():
    """WavLM-large + ECAPA-TDNN with random weights (the papers' SIM model shape), for timing only."""
    from transformers import WavLMConfig, WavLMModel

    from metis.eval.metrics.wavlm_tdnn import EcapaHead, WavLMTDNN

    cfg = WavLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=False, num_buckets=320,
                      max_bucket_distance=800, apply_spec_augment=False)
    return WavLMTDNN(WavLMModel(cfg), EcapaHead(feat_dim=1024, n_states=25)).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", default="pesq,stoi,sisdr,dnsmos,distillmos,sim,wer,nisqa,utmos",
                   help=f"comma list from {', '.join(METRIC_NAMES)}")
    p.add_argument("--seconds", type=float, default=60.0, help="total audio scored per metric")
    p.add_argument("--utterance", type=float, default=6.0, help="length of each utterance in seconds")
    p.add_argument("--threads", type=int, default=0, help="torch/ONNX/CTranslate2 threads (0: default)")
    p.add_argument("--whisper-model", default=None)
    p.add_argument("--wavlm-model", default=None)
    p.add_argument("--nisqa-checkpoint", default=None)
    p.add_argument("--utmos-checkpoint", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sr = 24000
    wavs, texts, source = utterances(a.seconds, a.utterance, sr)
    rng = np.random.default_rng(0)
    noisy = [(w + 0.05 * rng.standard_normal(len(w))).astype(np.float32) for w in wavs]
    prompt = Audio(wavs[-1][: 3 * sr], sr)
    if not a.nisqa_checkpoint and "nisqa" in a.metrics:
        a.nisqa_checkpoint = str(random_nisqa(Path(tempfile.mkdtemp()) / "nisqa_random.tar"))
        print("nisqa: timing a random-weight model of NISQA v2.0's shape (no nisqa.tar given)")
    metrics, notes = build_metrics([m.strip() for m in a.metrics.split(",") if m.strip()], MetricOptions(
        whisper_model=a.whisper_model, wavlm_model=a.wavlm_model, nisqa_checkpoint=a.nisqa_checkpoint,
        utmos_checkpoint=a.utmos_checkpoint, threads=a.threads))
    total_s = sum(len(w) for w in wavs) / sr
    print(f"audio: {len(wavs)} x {a.utterance:.1f} s = {total_s:.0f} s at {sr} Hz, {source}")
    print(f"torch threads {torch.get_num_threads()}, cpu")
    for n in notes:
        print(f"note: {n}")
    print(f"{'metric':<18}{'load s':>8}{'s / min audio':>16}{'x realtime':>12}")
    for m in metrics:
        kw = dict(reference=Audio(wavs[0], sr), prompt=prompt, text=texts[0])
        t = time.perf_counter()
        m.score(noisy[0], sr, **kw)  # warm-up: loads the model
        load = time.perf_counter() - t
        t = time.perf_counter()
        for w, x, txt in zip(wavs, noisy, texts, strict=True):
            m.score(x, sr, reference=Audio(w, sr), prompt=prompt, text=txt)
        spent = time.perf_counter() - t
        print(f"{m.name:<18}{load:>8.2f}{60 * spent / total_s:>16.2f}{total_s / spent:>12.1f}")
    if not a.wavlm_model and "sim" in a.metrics:
        t = time.perf_counter()
        model = random_wavlm_tdnn()
        load = time.perf_counter() - t
        t = time.perf_counter()
        for w in wavs:
            model(torch.from_numpy(resample(w, sr, 16000))[None])
        spent = time.perf_counter() - t
        print(f"{'sim_wavlm_tdnn*':<18}{load:>8.2f}{60 * spent / total_s:>16.2f}{total_s / spent:>12.1f}")
        print("* WavLM-large + ECAPA-TDNN with random weights (the papers' SIM model shape), one embedding per "
              "utterance; a SIM score embeds the prompt too (cached when prompts repeat)")


if __name__ == "__main__":
    main()
