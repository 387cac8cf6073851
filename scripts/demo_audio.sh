#!/usr/bin/env bash
# From nothing to listening, offline, on CPU: train every component the demo needs on the demo corpus,
# then run infer.py with pipeline=demo for every task (docs/codecs.md).
#
#   bash scripts/demo_audio.sh            # after `bash scripts/setup.sh`; writes demo_audio/*.wav
#
# Steps (each is skipped when its output exists, so a rerun resumes where it stopped):
#   1. python train.py                                demo corpus + stage-1 pre-training (k-means SSL tokens)
#   2. python train.py experiment=demo_acoustic_codec  the 24 kHz acoustic codec (published file layout)
#   3. python -m metis.data tokenize ... --acoustic    acoustic tokens of the corpus from that codec
#   4. python train.py experiment=demo_s2a_1layer / demo_s2a_full    S2A on k-means + codec tokens
#   5. python finetune.py experiment=demo_se / demo_tse / demo_plc / demo_tts / demo_vc / demo_l2s    stage-1 fine-tunes
#   6. python infer.py pipeline=demo task=...          24 kHz wavs in demo_audio/ (every task, then one manifest of all)
#   7. python -m metis.eval                            DNSMOS / Whisper-tiny WER of the outputs (demo_audio/eval/)
# l2s has no lip video offline: its "visual" stream is a stand-in computed from speech (25 fps log-mel,
# python -m metis.conditions.visual; NOT lip features -- the real task needs AV-HuBERT-style features).
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

step "1/7 demo corpus + stage-1 pre-training"
[ -f outputs/demo/export/model.safetensors ] || "$PY" train.py

step "2/7 acoustic codec"
[ -f outputs/demo_codec/export/acoustic_codec/model_1.safetensors ] && [ -z "${CODEC_STEPS:-}" ] ||
  "$PY" train.py experiment=demo_acoustic_codec ${CODEC_STEPS:+trainer.max_steps=$CODEC_STEPS}

step "3/7 acoustic tokens of the demo corpus"
# (re)made whenever the codec export is newer than them: S2A must learn the tokens its decoder reads
CODEC=outputs/demo_codec/export/acoustic_codec/model_1.safetensors
for split in train val; do
  [ "data/demo/tokens_ac/$split.done" -nt "$CODEC" ] && continue
  rm -rf "data/demo/tokens_ac/$split"
  "$PY" -m metis.data tokenize "data/demo/shards/$split" "data/demo/tokens_ac/$split" \
    --tokenizer kmeans:data/demo/tokenizer \
    --acoustic '{"_target_": "metis.tokenizers.acoustic.AcousticTokenizer.from_export", "path": "outputs/demo_codec/export"}'
  touch "data/demo/tokens_ac/$split.done"
done

step "4/7 S2A (layer 0, then layers 1-11), retrained from scratch when the tokens are newer"
for s2a in demo_s2a_1layer demo_s2a_full; do
  [ "outputs/$s2a/export/model.safetensors" -nt data/demo/tokens_ac/train.done ] || "$PY" train.py experiment=$s2a ckpt_path=null
done

step "5/7 stage-1 fine-tunes"
[ -f outputs/demo_se/export/model.safetensors ] || "$PY" finetune.py experiment=demo_se
[ -f outputs/demo_tse/export/model.safetensors ] || "$PY" finetune.py experiment=demo_tse
[ -f outputs/demo_plc/export/model.safetensors ] || "$PY" finetune.py experiment=demo_plc
[ -f outputs/demo_tts/export/model.safetensors ] || "$PY" finetune.py experiment=demo_tts
[ -f outputs/demo_vc/export/model.safetensors ] || "$PY" finetune.py experiment=demo_vc
[ -f outputs/demo_l2s/export/model.safetensors ] || "$PY" finetune.py experiment=demo_l2s

step "6/7 inference with pipeline=demo"
mkdir -p "$OUT"
LIBRI="$AUDIO/libritts_5142_33396_000002_000004"   # real speech with its transcript beside it
"$PY" infer.py pipeline=demo task=se input="$AUDIO/metis_se_noise.wav" output="$OUT/se.wav"
"$PY" infer.py pipeline=demo task=tse input="$AUDIO/metis_tse_mix.wav" prompt="$AUDIO/metis_tse_prompt.wav" output="$OUT/tse.wav"
"$PY" infer.py pipeline=demo task=plc input="$AUDIO/libritts_260_123440_000010_000004.wav" output="$OUT/plc.wav"
"$PY" infer.py pipeline=demo task=vc input="$AUDIO/metis_vc_source.wav" prompt="$AUDIO/metis_vc_prompt.wav" output="$OUT/vc.wav"
"$PY" infer.py pipeline=demo task=tts prompt="$AUDIO/maskgct_prompt.wav" \
  prompt_text="'We do not break. We never give in. We never back down.'" text="'$(cat "$LIBRI.txt")'" output="$OUT/tts.wav"
# l2s: a stand-in visual stream (log-mel of the LibriTTS clip, NOT lip video; see configs/experiment/demo_l2s.yaml)
"$PY" -m metis.conditions.visual "$LIBRI.wav" "$OUT/l2s_stand_in.npy"
"$PY" infer.py pipeline=demo task=l2s prompt="$AUDIO/metis_l2s_prompt.wav" video_features="$OUT/l2s_stand_in.npy" output="$OUT/l2s.wav"
# the same requests batched from one manifest (outputs in $OUT/manifest/, results.jsonl beside them)
"$PY" - "$AUDIO" "$OUT" <<'PY'
import json, pathlib, sys
audio, out = (pathlib.Path(p).resolve() for p in sys.argv[1:])
libri = audio / "libritts_5142_33396_000002_000004"
rows = [dict(task="se", input=audio / "metis_se_noise.wav"),
        dict(task="tse", input=audio / "metis_tse_mix.wav", prompt=audio / "metis_tse_prompt.wav"),
        dict(task="plc", input=audio / "libritts_260_123440_000010_000004.wav"),
        dict(task="vc", input=audio / "metis_vc_source.wav", prompt=audio / "metis_vc_prompt.wav"),
        dict(task="tts", prompt=audio / "maskgct_prompt.wav", prompt_text="We do not break. We never give in. We never back down.",
             text=libri.with_suffix(".txt").read_text().strip()),
        dict(task="l2s", prompt=audio / "metis_l2s_prompt.wav", video_features=out / "l2s_stand_in.npy")]
lines = [json.dumps({**{k: str(v) for k, v in r.items()}, "output": f"{r['task']}.wav"}) for r in rows]
(out / "requests.jsonl").write_text("\n".join(lines) + "\n")
PY
"$PY" infer.py pipeline=demo manifest="$OUT/requests.jsonl" output_dir="$OUT/manifest"

step "7/7 quality of the chain's outputs (python -m metis.eval: DNSMOS of every output and of each audio input, WER where there is a transcript)"
"$PY" - "$AUDIO" "$OUT" <<'PY'
import json, pathlib, sys
audio, out = (pathlib.Path(p).resolve() for p in sys.argv[1:])
text = lambda stem: (audio / f"{stem}.txt").read_text().strip()
rows = [dict(subset="se", input=audio / "metis_se_noise.wav"),
        dict(subset="tse", input=audio / "metis_tse_mix.wav"),
        dict(subset="plc", input=audio / "libritts_260_123440_000010_000004.wav", text=text("libritts_260_123440_000010_000004")),
        dict(subset="vc", input=audio / "metis_vc_source.wav"),
        dict(subset="tts", text=text("libritts_5142_33396_000002_000004")),
        dict(subset="l2s", text=text("libritts_5142_33396_000002_000004"))]  # the clip its stand-in stream came from
lines = [json.dumps({"id": r["subset"], "wav": str(out / f"{r['subset']}.wav"), **{k: str(v) for k, v in r.items()}}) for r in rows]
(out / "eval_manifest.jsonl").write_text("\n".join(lines) + "\n")
PY
"$PY" -m metis.eval --task se --manifest "$OUT/eval_manifest.jsonl" --metrics dnsmos,wer --out "$OUT/eval"
echo; echo "done: listen to $OUT/*.wav (24 kHz); scores in $OUT/eval/results.md"
