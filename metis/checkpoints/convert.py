"""Training checkpoint (Lightning `.ckpt` file or DeepSpeed ZeRO folder) -> published safetensors.

    python -m metis.checkpoints.convert outputs/run/checkpoints/last.ckpt out/metis_base   # an export folder
    python -m metis.checkpoints.convert outputs/run/checkpoints/last.ckpt out/metis_base --kind metis_base
    python -m metis.checkpoints.convert ckpt/wavlm_large_finetune.pth ckpt/ --trust-pickle  # -> ckpt/wavlm_large_finetune.safetensors

Writes `<out_dir>/model.safetensors` atomically (metadata: kind, global step, source) and beside it
`config.json`, the net's constructor config that the checkpoint carries (or, for a checkpoint
written before checkpoints carried it, the run's `<run>/export/config.json`): `<out_dir>` is then an
export folder that `metis.checkpoints.sources.resolve_source` and `infer.py` load. The config is
written only when it builds a net with exactly the converted keys (not for a LoRA run's
trainable-only checkpoint, whose files come from `--kind metis_<task>_lora` / `_adapter`).
With `--kind` (an override: the config alone says what the net is), the tensors written are the
part a file of that kind holds (`model`: everything; `lora`: the lora_A/lora_B tensors of a LoRA
run; `adapter`: model.cond_adapter.*), and their key names (layer indices aside) must be exactly the published ones, else the error lists the keys.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from metis.atomic import write_json
from metis.checkpoints.deepspeed import NET_CONFIG_KEY, NET_PREFIX, training_checkpoint_state
from metis.checkpoints.io import CheckpointMismatchError, save_safetensors
from metis.checkpoints.sources import EXPORT_CONFIG, EXPORT_WEIGHTS, build_export

_PART_FILTERS = {
    "model": lambda k: True,
    "lora": lambda k: ".lora_" in k,
    "adapter": lambda k: ".cond_adapter." in f".{k}",
}


def select_kind(state_dict: dict[str, torch.Tensor], kind: str, source: str) -> dict[str, torch.Tensor]:
    """The tensors a file of `kind` holds, checked against the published key layout."""
    from metis.checkpoints import published

    spec = published.kind_spec(kind)
    sd = {k: v for k, v in state_dict.items() if _PART_FILTERS[spec.part](k)}
    reference = published.key_pattern(published.file_state_dict(published.build(kind, "meta"), kind))
    got = published.key_pattern(sd)
    if got != reference:
        raise CheckpointMismatchError(f"{source} as {kind!r}", missing=reference - got, unexpected=got - reference,
                                      note="key patterns ('#' = any layer index) differ from the published layout; "
                                           "a LoRA checkpoint without frozen weights converts only to a 'lora'/'adapter' kind")
    return sd


def convert(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, kind: str | None = None,
            prefix: str = NET_PREFIX, filename: str = "model.safetensors") -> Path:
    """Convert `checkpoint` into `out_dir/filename`; returns the written path."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    sd, info = training_checkpoint_state(checkpoint, prefix)
    if kind is not None:
        sd = select_kind(sd, kind, str(checkpoint))
    meta = {"format": "pt", "metis.source": str(checkpoint)}
    if kind is not None:
        meta["metis.kind"] = kind
    if "global_step" in info:
        meta["global_step"] = str(int(info["global_step"]))
    path = save_safetensors(sd, out_dir / filename, metadata=meta)
    config = info.get(NET_CONFIG_KEY) or _run_config(checkpoint)
    if config is not None and filename == EXPORT_WEIGHTS and _builds(config, sd):
        write_json(out_dir / EXPORT_CONFIG, config)
    return path


def convert_pickled(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A pickled torch checkpoint that the user vouches for (`--trust-pickle`; e.g. the UniSpeech
    `wavlm_large_finetune.pth` of the SIM metric) -> `<out_dir>/<stem>.safetensors` holding the tensors
    of its `model` (or `state_dict`) entry. The one place in the package that unpickles objects,
    once, on explicit request; everything else then reads the safetensors file."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)  # --trust-pickle: the user's call
    sd = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, dict) else None
    tensors = {k: v for k, v in (sd or {}).items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{checkpoint} holds no tensors under 'model', 'state_dict' or at the top level")
    return save_safetensors(tensors, Path(out_dir) / f"{checkpoint.stem}.safetensors",
                            metadata={"format": "pt", "metis.source": str(checkpoint)})


def _run_config(checkpoint: Path) -> dict | None:
    """`<run>/export/config.json` for a checkpoint at `<run>/checkpoints/<name>` (checkpoints that do
    not carry their net config)."""
    candidate = checkpoint.resolve().parent.parent / "export" / EXPORT_CONFIG
    return json.loads(candidate.read_text()) if candidate.is_file() else None


def _builds(config: dict, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether `config` builds a net (on the meta device: no memory) with exactly these keys."""
    from metis.checkpoints import published

    with torch.device("meta"):
        net = build_export(config, published.STAGE1, source="the checkpoint's net config")
    return set(net.state_dict()) == set(state_dict)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metis.checkpoints.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a Lightning .ckpt file or a DeepSpeed checkpoint folder (e.g. last.ckpt/)")
    ap.add_argument("out_dir", help="folder for model.safetensors (+ config.json)")
    ap.add_argument("--kind", default=None, help="published kind to check the keys against and cut the file by (e.g. "
                    "metis_base, maskgct_s2a_full, metis_se_lora); default: the net as trained, with its config.json")
    ap.add_argument("--prefix", default=NET_PREFIX, help=f"module prefix to strip (default {NET_PREFIX!r}; '' keeps all keys)")
    ap.add_argument("--filename", default="model.safetensors", help="output file name inside out_dir")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="the file is a pickled torch checkpoint you trust (e.g. UniSpeech wavlm_large_finetune.pth): "
                         "unpickle it once and write its tensors to <out_dir>/<stem>.safetensors")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = ap.parse_args(argv)
    from metis.cli import is_user_error, report_user_error

    try:
        if args.trust_pickle:
            path = convert_pickled(args.checkpoint, args.out_dir)
        else:
            path = convert(args.checkpoint, args.out_dir, args.kind, args.prefix, args.filename)
    except Exception as exn:  # noqa: BLE001 - the one CLI error style (metis.cli.user_errors)
        if args.debug or not is_user_error(exn):
            raise
        return report_user_error("metis convert", exn)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        n = len(list(f.keys()))
        meta = f.metadata()
    print(json.dumps({"written": str(path), "tensors": n, "global_step": meta.get("global_step"),
                      "kind": meta.get("metis.kind")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
