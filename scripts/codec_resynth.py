"""Resynthesise speech through a trained acoustic codec and write a `python -m metis.eval` manifest.

    python scripts/codec_resynth.py outputs/demo_codec/export ../shared/audio/libritts_*.wav --out eval/codec
    python -m metis.eval --task se --manifest eval/codec/manifest.jsonl --metrics pesq,stoi,mel,wer,dnsmos --out eval/codec/results

Each input is encoded to the codec's 12 x 1024 codes at 50 Hz and decoded back at 24 kHz
(`<out>/<stem>.wav`); the manifest pairs it with the original as `reference` and, when a `<stem>.txt`
transcript sits beside the input, its `text` (for WER). `--quantizers N` decodes the first N stages only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metis.atomic import write_text
from metis.audio import load_tensor, save
from metis.tokenizers.acoustic import AcousticTokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", help="codec export folder (acoustic_codec/model{,_1}.safetensors + codec_config.json)")
    p.add_argument("inputs", nargs="+", help="speech files (any rate; resampled to 24 kHz)")
    p.add_argument("--out", required=True, help="folder for the resynthesised wavs and manifest.jsonl")
    p.add_argument("--quantizers", type=int, default=None, help="decode only the first N RVQ stages")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    codec = AcousticTokenizer.from_export(args.export)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for path in map(Path, args.inputs):
        wav = load_tensor(path, codec.sample_rate)
        codes = codec.encode([wav])[0]  # (t, q)
        if args.quantizers:
            codes = codes[:, : args.quantizers]
        resynth = codec.decode(codes[None])[0]
        dst = out / f"{path.stem}.wav"
        save(dst, resynth)
        item = {"id": path.stem, "wav": str(dst.resolve()), "reference": str(path.resolve())}
        text = path.with_suffix(".txt")
        if text.is_file():
            item["text"] = text.read_text().strip()
        lines.append(json.dumps(item))
        print(f"{path.name}: {codes.shape[0]} frames x {codes.shape[1]} stages -> {dst}")
    write_text(out / "manifest.jsonl", "\n".join(lines) + "\n")
    print(f"manifest: {out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
