#!/usr/bin/env bash
# From nothing to listening, offline, on CPU: train every component the demo needs on the demo corpus,
# then run infer.py with pipeline=demo (docs/codecs.md).
#
#   bash scripts/demo_audio.sh            # after `bash scripts/setup.sh`; writes demo_audio/*.wav
#
# Steps (each is skipped when its output exists, so a rerun resumes where it stopped):
#   1. python train.py                                demo corpus + stage-1 pre-training (k-means SSL tokens)
#   2. python train.py experiment=demo_acoustic_codec  the 24 kHz acoustic codec (published file layout)
#   3. python -m metis.data tokenize ... --acoustic    acoustic tokens of the corpus from that codec
#   4. python train.py experiment=demo_s2a_1layer / demo_s2a_full    S2A on k-means + codec tokens
#   5. python finetune.py experiment=demo_se / demo_tse / demo_plc    stage-1 fine-tunes
#   6. python infer.py pipeline=demo task=...          24 kHz wavs in demo_audio/
# Optional: python train.py experiment=demo_semantic_codec (RepCodec on the demo's features).
#
# Environment: PY (python, default .venv/bin/python), AUDIO (real speech inputs, default ../shared/audio),
# CODEC_STEPS (acoustic codec optimizer steps, default the preset's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
AUDIO=${AUDIO:-../shared/audio}
OUT=${OUT:-demo_audio}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2} WANDB_MODE=${WANDB_MODE:-offline}

step() { echo; echo "== $*"; }

step "1/6 demo corpus + stage-1 pre-training"
[ -f outputs/demo/export/model.safetensors ] || "$PY" train.py

step "2/6 acoustic codec"
[ -f outputs/demo_codec/export/acoustic_codec/model_1.safetensors ] && [ -z "${CODEC_STEPS:-}" ] ||
  "$PY" train.py experiment=demo_acoustic_codec ${CODEC_STEPS:+trainer.max_steps=$CODEC_STEPS}

step "3/6 acoustic tokens of the demo corpus"
for split in train val; do
  "$PY" -m metis.data tokenize "data/demo/shards/$split" "data/demo/tokens_ac/$split" \
    --tokenizer kmeans:data/demo/tokenizer \
    --acoustic 'metis.tokenizers.acoustic:AcousticTokenizer.from_export:outputs/demo_codec/export'
done

step "4/6 S2A (layer 0, then layers 1-11)"
[ -f outputs/demo_s2a_1layer/export/model.safetensors ] || "$PY" train.py experiment=demo_s2a_1layer
[ -f outputs/demo_s2a_full/export/model.safetensors ] || "$PY" train.py experiment=demo_s2a_full

step "5/6 stage-1 fine-tunes"
[ -f outputs/demo_se/export/model.safetensors ] || "$PY" finetune.py experiment=demo_se
[ -f outputs/demo_tse/export/model.safetensors ] || "$PY" finetune.py experiment=demo_tse
[ -f outputs/demo_plc/export/model.safetensors ] || "$PY" finetune.py experiment=demo_plc

step "6/6 inference with pipeline=demo"
mkdir -p "$OUT"
"$PY" infer.py pipeline=demo task=se input="$AUDIO/metis_se_noise.wav" output="$OUT/se.wav"
"$PY" infer.py pipeline=demo task=tse input="$AUDIO/metis_tse_mix.wav" prompt="$AUDIO/metis_tse_prompt.wav" output="$OUT/tse.wav"
"$PY" infer.py pipeline=demo task=plc input="$AUDIO/libritts_260_123440_000010_000004.wav" output="$OUT/plc.wav"
echo; echo "done: listen to $OUT/*.wav (24 kHz)"
