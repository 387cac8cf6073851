"""Data tools: python -m metis.data {prepare,tokenize,stats,demo} --help"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _summary(title: str, summary: dict) -> None:
    print(f"\n== {title} summary ==")
    for k, v in summary.items():
        if k in ("shard_names", "config"):
            continue
        print(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metis.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # tokenize and stats keep only the samples the loader would train on (metis/data/validate.py)
    rules = argparse.ArgumentParser(add_help=False)
    rules.add_argument("--min-dur", type=float, default=None, help="samples whose json duration is shorter are "
                       "left out and counted as too_short (default: the loader's min_dur, 0.5)")
    rules.add_argument("--max-dur", type=float, default=None, help="samples whose json duration is longer are "
                       "left out and counted as too_long (default: the loader's max_dur, 30)")
    limits = argparse.ArgumentParser(add_help=False)  # metis.audio.check's limits (docs/data.md)
    limits.add_argument("--min-std", type=float, default=None, help="audio varying less is constant (DC): "
                        "left out, counted as constant_audio (default: metis.audio.MIN_STD, 1e-5)")
    limits.add_argument("--max-clipped-fraction", type=float, default=None, help="audio with more of its samples "
                        "at full scale is clipped flat: left out, counted as clipped_audio (default: 0.5)")

    a = sub.add_parser("prepare", parents=[common, limits], help="audio folder / manifest / LibriTTS / LibriSpeech -> shards")
    a.add_argument("input", help="folder, or manifest .jsonl/.csv/.tsv")
    a.add_argument("out_dir")
    a.add_argument("--layout", default="auto", choices=["auto", "folder", "manifest", "libritts", "librispeech"])
    a.add_argument("--sample-rate", type=int, default=None, help="default: keep the file's rate, at most 24000")
    a.add_argument("--min-dur", type=float, default=0.5)
    a.add_argument("--max-dur", type=float, default=30.0, help="longer files are split at quiet points")
    a.add_argument("--shard-samples", type=int, default=1000)
    a.add_argument("--shard-bytes", type=float, default=1e9)
    a.add_argument("--language", default="en")
    a.add_argument("--prefix", default="shard")
    a.add_argument("--workers", type=int, default=1)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--overwrite", action="store_true")

    t = sub.add_parser("tokenize", parents=[common, rules, limits], help="shards -> token shards (resumable)")
    t.add_argument("shards", help="shard pattern, e.g. 'data/x/shard-{000000..000099}.tar' or a folder")
    t.add_argument("out_dir")
    t.add_argument("--tokenizer", required=True, help="spec: kmeans:DIR | semantic[:{json}] | acoustic | a _target_ node as JSON")
    t.add_argument("--acoustic", default=None, help="acoustic tokenizer spec (adds ac.npy)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    t.add_argument("--batch-seconds", type=float, default=200.0)
    t.add_argument("--no-audio", action="store_true", help="drop the audio from the token shards")
    t.add_argument("--part", type=int, default=0, help="this job's index when several jobs share the shards")
    t.add_argument("--num-parts", type=int, default=1)

    s = sub.add_parser("stats", parents=[common, rules, limits], help="mean/var of SSL features over shards -> safetensors")
    s.add_argument("shards")
    s.add_argument("out", help="output .safetensors (keys mean, var, std)")
    s.add_argument("--features", required=True, help="spec of the feature extractor (as --tokenizer)")
    s.add_argument("--device", default=None)
    s.add_argument("--max-hours", type=float, default=None)
    s.add_argument("--batch-seconds", type=float, default=200.0)

    d = sub.add_parser("demo", parents=[common], help="build the offline demo corpus (asterisk prompts + espeak-ng)")
    d.add_argument("--out-dir", default="data/demo")
    d.add_argument("--n-prompts", type=int, default=None)
    d.add_argument("--n-synth", type=int, default=None, help="espeak-ng utterances of the pre-training voices (default: DemoConfig's)")
    d.add_argument("--clusters", type=int, default=512)
    d.add_argument("--max-fit-frames", type=int, default=50_000)
    d.add_argument("--seed", type=int, default=0)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from metis.cli import user_errors

    with user_errors(f"metis data {args.cmd}", debug=args.debug):
        return _run(args, p)


def _rules(args: argparse.Namespace):
    from metis.data.validate import SampleRules

    return SampleRules(**_given(args, ("min_dur", "max_dur", "min_std", "max_clipped_fraction")))


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The options of `names` given on the command line (the others keep their defaults)."""
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def _run(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    if args.cmd == "prepare":
        from metis.data.prepare import prepare

        summary = prepare(args.input, args.out_dir, layout=args.layout, language=args.language,
                          overwrite=args.overwrite, sample_rate=args.sample_rate, min_dur=args.min_dur,
                          max_dur=args.max_dur, max_count=args.shard_samples, max_bytes=int(args.shard_bytes),
                          seed=args.seed, workers=args.workers, prefix=args.prefix,
                          **_given(args, ("min_std", "max_clipped_fraction")))
        _summary("prepare", summary)
    elif args.cmd == "tokenize":
        from metis.data.specs import load_tokenizer
        from metis.data.tokenize import tokenize

        tok = load_tokenizer(args.tokenizer, args.device)
        ac = load_tokenizer(args.acoustic, args.device) if args.acoustic else None
        summary = tokenize(args.shards, args.out_dir, tok, ac, keep_audio=not args.no_audio,
                           batch_seconds=args.batch_seconds, part=args.part, num_parts=args.num_parts,
                           rules=_rules(args))
        _summary("tokenize", summary)
    elif args.cmd == "stats":
        from metis.data.specs import load_tokenizer
        from metis.data.stats import compute_stats

        ext = load_tokenizer(args.features, args.device, require=("sample_rate",))
        if not hasattr(ext, "raw_features") and not hasattr(ext, "features"):
            p.error(f"--features {args.features!r}: the object has neither raw_features nor features")
        _summary("stats", compute_stats(args.shards, ext, args.out, max_hours=args.max_hours,
                                        batch_seconds=args.batch_seconds,
                                        rules=_rules(args)))
    elif args.cmd == "demo":
        from metis.data.demo import DemoConfig, build_demo

        cfg = DemoConfig(out_dir=args.out_dir, n_prompts=args.n_prompts, n_clusters=args.clusters,
                         max_fit_frames=args.max_fit_frames, seed=args.seed, **_given(args, ("n_synth",)))
        _summary("demo", build_demo(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
