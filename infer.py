"""Inference with the released or fine-tuned checkpoints: one request, or a manifest of many.

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

import hydra
from omegaconf import DictConfig


# configs/infer/ is its own search path: the training tree has a `task` group, and here `task=se` is a value
@hydra.main(version_base="1.3", config_path="configs/infer", config_name="infer")
def main(cfg: DictConfig) -> None:
    from metis.inference.cli import infer  # import after Hydra parsed the CLI (fast --help/--cfg)

    results = infer(cfg)
    if not all(r.ok for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
