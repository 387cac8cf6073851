"""``python -m metis.eval``: score generated audio of one task against its references and prompts.

Examples::

    # any layout, via a jsonl manifest (see metis.eval.protocols)
    python -m metis.eval --task tts --manifest gen/manifest.jsonl --out results/tts
    # SeedTTS-eval test-en with Whisper-large-v3 and a WavLM speaker-verification folder
    python -m metis.eval --task tts --protocol seedtts --data seedtts_testset/en/meta.lst --gen-dir gen/ \\
        --whisper-model ckpt/faster-whisper-large-v3 --wavlm-model ckpt/wavlm_large_finetune.safetensors \\
        --out results/seed-en
    # DNS 2020 test set (SE) and Libri2Mix (TSE)
    python -m metis.eval --task se --protocol dns2020 --data DNS/test_set --gen-dir enhanced/ --out results/se
    python -m metis.eval --task tse --protocol libri2mix --data Libri2Mix/wav16k/min --gen-dir tse_out/ \\
        --enrollment enroll.tsv --librispeech LibriSpeech/test-clean --out results/tse
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from metis.eval.metrics import METRIC_NAMES, MetricOptions, build_metrics
from metis.eval.protocols import (TASK_METRICS, TASKS_WITH_INPUT, read_dns2020, read_folder, read_libri2mix,
                                  read_manifest, read_seedtts)
from metis.eval.report import log_wandb, summarize, write_report
from metis.eval.runner import evaluate

log = logging.getLogger("metis.eval")
PROTOCOLS = ("manifest", "folder", "seedtts", "dns2020", "libri2mix")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metis.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--task", required=True, choices=sorted(TASK_METRICS), help="sets the default metric set")
    p.add_argument("--protocol", choices=PROTOCOLS, help="test-set layout (default: manifest if --manifest "
                                                          "else folder)")
    p.add_argument("--manifest", help="jsonl manifest (protocol 'manifest')")
    p.add_argument("--data", help="seedtts: meta.lst; dns2020: test_set root; libri2mix: dataset root")
    p.add_argument("--gen-dir", help="folder of generated audio, one <id>.wav per utterance")
    p.add_argument("--reference-dir", help="folder protocol: clean references with the same file names")
    p.add_argument("--prompt-dir", help="folder protocol: speaker prompts with the same file names")
    p.add_argument("--lang", default=None, help="language of the texts (default en; seedtts guesses from path)")
    p.add_argument("--mix", default="mix_clean", help="libri2mix mixture type (mix_clean, mix_both, ...)")
    p.add_argument("--enrollment", help="libri2mix: TSV mixture_ID<TAB>s1|s2<TAB>enrollment.wav")
    p.add_argument("--librispeech", help="libri2mix: LibriSpeech test-clean root for transcripts")
    p.add_argument("--metrics", help=f"comma list overriding the task's set; from {', '.join(METRIC_NAMES)}")
    p.add_argument("--no-input", action="store_true", help="se/tse: do not score the input (before) audio")
    p.add_argument("--limit", type=int, default=0, help="score only the first N items")
    p.add_argument("--out", required=True, help="output folder for the tables and plots")
    p.add_argument("--whisper-model", default=os.environ.get("METIS_WHISPER_MODEL"),
                   help="CTranslate2 Whisper folder (paper: large-v3); env METIS_WHISPER_MODEL")
    p.add_argument("--wavlm-model", default=os.environ.get("METIS_WAVLM_MODEL"),
                   help="SIM model: UniSpeech wavlm_large_finetune.safetensors (papers' SIM-O; convert the released .pth "
                        "once with `python -m metis.checkpoints.convert FILE.pth DIR --trust-pickle`) or a "
                        "WavLMForXVector folder; env METIS_WAVLM_MODEL")
    p.add_argument("--nisqa-checkpoint", default=os.environ.get("METIS_NISQA_CHECKPOINT"), help="nisqa.tar")
    p.add_argument("--utmos-checkpoint", default=os.environ.get("METIS_UTMOS_CHECKPOINT"),
                   help="exported UTMOS (.pt2 or TorchScript)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for ONNX/CTranslate2 (0: library default)")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--wandb", action="store_true", help="log to wandb (WANDB_MODE=offline works)")
    p.add_argument("--wandb-project", default="metis-eval")
    p.add_argument("--run-name", default=None)
    return p


def protocol_of(a: argparse.Namespace) -> str:
    return a.protocol or ("manifest" if a.manifest else "folder")


def load_items(a: argparse.Namespace):
    protocol = protocol_of(a)

    def need(flag: str, value):
        if not value:
            raise ValueError(f"--protocol {protocol} needs {flag}")
        return value

    if protocol == "manifest":
        return read_manifest(need("--manifest", a.manifest))
    if protocol == "folder":
        return read_folder(need("--gen-dir", a.gen_dir), reference_dir=a.reference_dir, prompt_dir=a.prompt_dir,
                           lang=a.lang or "en")
    if protocol == "seedtts":
        return read_seedtts(need("--data", a.data), need("--gen-dir", a.gen_dir), task=a.task, lang=a.lang)
    if protocol == "dns2020":
        return read_dns2020(need("--data", a.data), need("--gen-dir", a.gen_dir))
    return read_libri2mix(need("--data", a.data), need("--gen-dir", a.gen_dir), mix=a.mix,
                          enrollment=a.enrollment, librispeech=a.librispeech)


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from metis.cli import user_errors

    with user_errors("metis eval", debug=a.debug):
        return run(a)


def run(a: argparse.Namespace) -> dict:
    """The evaluation `main` runs on parsed arguments."""
    items = load_items(a)
    if a.limit:
        items = items[: a.limit]
    names = [n.strip() for n in a.metrics.split(",") if n.strip()] if a.metrics else TASK_METRICS[a.task]
    options = MetricOptions(whisper_model=a.whisper_model, wavlm_model=a.wavlm_model,
                            nisqa_checkpoint=a.nisqa_checkpoint, utmos_checkpoint=a.utmos_checkpoint,
                            device=a.device, beam_size=a.beam_size, threads=a.threads)
    metrics, notes = build_metrics(names, options)
    for n in notes:
        log.warning("note: %s", n)
    if not metrics:
        raise ValueError("no metric can run here: " + "; ".join(notes))
    log.info("task %s: %d items, metrics %s", a.task, len(items), ", ".join(m.name for m in metrics))
    t = time.perf_counter()
    score_input = a.task in TASKS_WITH_INPUT and not a.no_input
    rows, stats = evaluate(items, metrics, score_input=score_input)
    stats["wall_seconds"] = time.perf_counter() - t
    settings = {k: v for k, v in vars(a).items()}
    paths = write_report(rows, a.out, task=a.task, metrics=[m.description for m in metrics], notes=notes,
                         stats=stats, settings=settings, make_plots=not a.no_plots,
                         protocol=protocol_of(a))
    print(Path(paths["results_md"]).read_text(encoding="utf-8"))
    if a.wandb:
        log_wandb(paths, summarize(rows), task=a.task, project=a.wandb_project, run_name=a.run_name,
                  config=settings)
    return {"rows": rows, "paths": paths, "notes": notes, "stats": stats}


if __name__ == "__main__":
    main(sys.argv[1:])
