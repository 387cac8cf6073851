"""`infer(cfg)`: what `python infer.py` runs (kept apart from @hydra.main so tests call it directly)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metis.inference.manifest import read_manifest, run_manifest, write_results
from metis.inference.pipeline import Result
from metis.inference.tasks import Request
from metis.tasks import names, store_decode_config

store_decode_config()  # composing configs/infer/infer.yaml needs it (infer.py does the same)

log = logging.getLogger(__name__)
SINGLE_KEYS = ("task", "input", "prompt", "text", "prompt_text", "language", "target_seconds", "video_features", "seed")


def single_request(cfg: DictConfig) -> Request:
    if cfg.get("task") is None:
        raise ValueError(f"give task=<{'|'.join(names(inference=True))}> (with its inputs) or manifest=<requests.jsonl>")
    kw = {k: cfg.get(k) for k in SINGLE_KEYS if cfg.get(k) is not None}
    overrides = OmegaConf.to_container(cfg.overrides, resolve=True) if cfg.get("overrides") else {}
    return Request(output=str(cfg.output), overrides=overrides, **kw)


def infer(cfg: DictConfig) -> list[Result]:
    """Build the pipeline (`cfg.pipeline`, instantiated by Hydra) and run one request or a manifest.

    Returns the results; the caller decides the exit status (non-zero if any failed).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from metis.checkpoints.io import CheckpointNotFoundError

    from metis.threads import set_threads

    set_threads(cfg.get("num_threads", "auto"))
    request = None if cfg.get("manifest") else single_request(cfg)  # check the CLI before loading models
    if request is not None:
        request.validate()
    # only the requested tasks' checkpoints must be there (every missing file is named in one error)
    tasks = [request.task] if request is not None else \
        sorted({r.task for r in read_manifest(cfg.manifest, cfg.output_dir) if isinstance(r, Request)}) or None
    try:
        pipeline = instantiate(cfg.pipeline, _convert_="all", **({"tasks": tasks} if tasks else {}))
    except InstantiationException as e:
        if isinstance(e.__cause__, CheckpointNotFoundError):  # its message lists every missing file: not Hydra's repr
            raise e.__cause__ from None
        raise
    if request is None:
        results = run_manifest(pipeline, cfg.manifest, cfg.output_dir, cfg.get("results"))
    else:
        results = pipeline.run([request])
        if cfg.get("results"):
            write_results(results, cfg.results)
    for r in results:
        if r.ok:
            log.info("%s -> %s (%.2f s of audio, RTF %.3f)", r.task, r.output, r.audio_seconds,
                     r.compute_seconds / r.audio_seconds)
        else:
            log.error("request %d (%s) failed: %s", r.index, r.task, r.error)
    ok = sum(r.ok for r in results)
    log.info("%d of %d requests done%s", ok, len(results), f"; outputs in {Path(cfg.output_dir)}" if cfg.get("manifest") else "")
    return results


def infer_and_exit(cfg: DictConfig) -> None:
    """`metis infer` / `python infer.py`: exit non-zero when any request failed."""
    if not all(r.ok for r in infer(cfg)):
        sys.exit(1)
