"""Inference with the released or fine-tuned checkpoints: one request, or a manifest of many (the same
job as `metis infer`).

    python infer.py task=se input=noisy.wav output=clean.wav
    python infer.py task=tse input=mix.wav prompt=enroll.wav output=target.wav
    python infer.py task=vc input=source.wav prompt=ref.wav output=converted.wav
    python infer.py task=tts 'text="Hello there."' prompt=ref.wav 'prompt_text="Transcript of ref."' output=tts.wav
    python infer.py task=l2s video_features=feats.npy prompt=ref.wav output=l2s.wav
    python infer.py manifest=requests.jsonl output_dir=out/ fast=true
    python infer.py --cfg job                          # print the resolved config

See docs/inference.md and configs/infer/infer.yaml.
"""

import sys

from metis.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
