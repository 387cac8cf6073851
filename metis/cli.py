"""`metis <job> ...`: one command for every job of the project.

    metis train    [key=value ...]   pre-train Metis stage 1 or MaskGCT S2A      (configs/train.yaml; = python train.py)
    metis finetune [key=value ...]   fine-tune for a task, full or LoRA          (configs/finetune.yaml; = python finetune.py)
    metis infer    [key=value ...]   tts / se / tse / vc / l2s from checkpoints  (configs/infer/infer.yaml; = python infer.py)
    metis data     {prepare,tokenize,stats,demo} ...   data tools            (= python -m metis.data)
    metis eval     ...                                 metrics and reports   (= python -m metis.eval)
    metis convert  CKPT OUT --kind KIND                checkpoint -> published safetensors layout
    metis app      [--port 7860] [--share-folder ...]  web app to try every task (needs the `app` extra)

`metis <job> --help` explains one job. The Hydra jobs (train, finetune, infer) take Hydra overrides;
their configs come with the package (a wheel carries configs/ as metis/configs) or from the clone.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from metis.tasks import names as task_names
from metis.tasks import store_decode_config

store_decode_config()  # configs/infer/infer.yaml's pipeline.stage1_settings come from the task registry


def config_root() -> Path:
    """The recipes' config tree: `metis/configs` in an installed wheel, else the clone's `configs/`."""
    here = Path(__file__).resolve().parent
    for root in (here / "configs", here.parent / "configs"):
        if (root / "train.yaml").is_file():
            return root
    raise FileNotFoundError(f"no configs/ found beside {here} (a wheel carries them as metis/configs; a clone as configs/)")


@dataclass(frozen=True)
class HydraJob:
    name: str
    config_dir: str  # relative to config_root()
    config_name: str
    task: str  # "module:function" taking the composed DictConfig
    summary: str


HYDRA_JOBS = {
    "train": HydraJob("train", ".", "train", "metis.lightning.training:train", "Pre-train Metis stage 1 or MaskGCT S2A."),
    "finetune": HydraJob("finetune", ".", "finetune", "metis.lightning.finetuning:finetune",
                         f"Fine-tune Metis for a task ({', '.join(task_names())}), full or LoRA, with condition adapters."),
    # configs/infer/ is its own search path: the training tree has a `task` group, and here `task=se` is a value
    "infer": HydraJob("infer", "infer", "infer", "metis.inference.cli:infer_and_exit",
                      "Inference with published or fine-tuned checkpoints: one request, or a manifest of many."),
}
# argparse jobs: name -> "module:main(argv) -> int", prog
ARGPARSE_JOBS = {
    "data": "metis.data.__main__:main",
    "eval": "metis.eval.cli:main",
    "convert": "metis.checkpoints.convert:main",
    "app": "metis.app:main",
}
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun"}
_OWN_SEARCH_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "-m", "--multirun"}


def _call(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ------------------------------------------------------------------------------ help and key checks


def _defaults_groups(config_dir: Path, config_name: str) -> list[str]:
    from omegaconf import OmegaConf

    groups = []
    for entry in OmegaConf.load(config_dir / f"{config_name}.yaml").get("defaults", []):
        if isinstance(entry, str) or not hasattr(entry, "keys"):
            continue
        for key in entry.keys():
            group = str(key).removeprefix("optional ").removeprefix("override ").strip()
            if group != "_self_" and "/" not in group:
                groups.append(group)
    return groups


def _composes(config_dir: Path, config_name: str, overrides: list[str]) -> Exception | None:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            compose(config_name, overrides=overrides, return_hydra_config=any(o.lstrip("+~").startswith("hydra.") for o in overrides))
    except Exception as e:  # noqa: BLE001 - any composition error is the answer
        return e
    return None


def help_text(job: HydraJob) -> str:
    """The job's summary, the config groups its primary config uses with the options that compose with
    it (so `train --help` lists no fine-tuning experiment), and the Hydra flags."""
    config_dir = config_root() / job.config_dir
    lines = [f"usage: metis {job.name} [key=value ...] [group=option ...]   (or python {job.name}.py ...)", "",
             job.summary, f"Config: {config_dir / job.config_name}.yaml; every value can be overridden.", ""]
    groups = _defaults_groups(config_dir, job.config_name)
    if groups:
        lines.append("Config groups (group=option):")
        for group in groups:
            options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
            if group == "experiment":
                options = [o for o in options if _composes(config_dir, job.config_name, [f"experiment={o}"]) is None]
            if options:
                lines.append(f"  {group + ':':<11} {', '.join(options)}")
        lines.append("")
    lines += ["Options:", "  --cfg job        print the resolved config and exit", "  -m key=a,b       sweep (multirun)",
              "  --hydra-help     Hydra's own flags", f"  e.g. metis {job.name} --cfg job"]
    return "\n".join(lines)


_NO_KEY = (re.compile(r"Could not override '([^']+)'"), re.compile(r"Key '[^']+' is not in struct\s+full_key: (\S+)"))


def _missing_key(error: Exception) -> str | None:
    text = str(error)
    if "No match in the defaults list" in text or "Could not find '" in text:
        return None  # a group or option problem: Hydra's message already lists the choices
    for pattern in _NO_KEY:
        if m := pattern.search(text):
            return m.group(1)
    return None


def suggest_key(cfg, key: str) -> str | None:
    """The closest existing dotted key to `key` in `cfg` (at the first level that does not exist)."""
    from omegaconf import DictConfig

    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node.keys()], n=1, cutoff=0.6)
            return ".".join(parts[:i] + close[:1]) if close else None
        node = node[part]
    return None


def unknown_key_error(job: HydraJob, argv: list[str]) -> str | None:
    """One line naming an override whose key does not exist, with "did you mean" when a key is close;
    None when the overrides compose (or the problem is something else, left to Hydra's report)."""
    if any(a in _OWN_SEARCH_FLAGS or a.split("=")[0] in _OWN_SEARCH_FLAGS for a in argv):
        return None
    overrides, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUE_FLAGS:
            skip = True
        elif not a.startswith("-") and "=" in a:
            overrides.append(a)
    if not overrides:
        return None
    config_dir = config_root() / job.config_dir
    error = _composes(config_dir, job.config_name, overrides)
    key = _missing_key(error) if error is not None else None
    if key is None:
        return None
    from hydra import compose, initialize_config_dir

    rest = [o for o in overrides if o.lstrip("+~").split("=")[0] != key]
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(job.config_name, overrides=rest)
    except Exception:  # noqa: BLE001 - another override is wrong too: Hydra reports it
        return None
    value = next(o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == key)
    guess = suggest_key(cfg, key)
    hint = f"did you mean `{guess}`? " if guess else ""
    return f"metis {job.name}: there is no config key `{key}`; {hint}(to add a new key: +{key}={value})"


# ------------------------------------------------------------------------------ errors


def is_user_error(exn: BaseException) -> bool:
    """Errors that say what is wrong with the user's input: the standard bad-input ones (a missing or
    unreadable file, a bad value, a missing key) and every exception class metis defines (raised on
    purpose, with a message naming the file / field)."""
    return isinstance(exn, (OSError, ValueError, KeyError)) or type(exn).__module__.split(".")[0] == "metis"


def one_line(exn: BaseException) -> str:
    text = exn.args[0] if isinstance(exn, KeyError) and exn.args else str(exn)
    return str(text) or type(exn).__name__


@contextmanager
def user_errors(prog: str, *, debug: bool, how: str = "--debug"):
    """The one error style of every metis CLI: a user error is printed as `prog: error: <message>` and
    exits with status 2; `debug` (the job's `--debug`, or HYDRA_FULL_ERROR=1 for the Hydra jobs) lets it
    raise with its traceback. Anything else (a bug) keeps its traceback."""
    try:
        yield
    except Exception as exn:  # noqa: BLE001 - sorted below
        if debug or not is_user_error(exn):
            raise
        raise SystemExit(report_user_error(prog, exn, how)) from None


def report_user_error(prog: str, exn: BaseException, how: str = "--debug") -> int:
    """Print the one error line of `user_errors`; returns the exit status (2)."""
    print(f"{prog}: error: {one_line(exn)}  [{how} for the traceback]", file=sys.stderr)
    return 2


def hydra_debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "").strip() not in ("", "0")


# ------------------------------------------------------------------------------ running jobs


def run_hydra_job(job: HydraJob, argv: list[str]) -> int:
    import hydra

    if any(a in ("-h", "--help") for a in argv):
        print(help_text(job))
        return 0
    if error := unknown_key_error(job, argv):
        print(error, file=sys.stderr)
        return 2
    def task(cfg):  # the job's module (torch, Lightning) loads after Hydra parsed the CLI: fast --cfg
        with user_errors(f"metis {job.name}", debug=hydra_debug(), how="HYDRA_FULL_ERROR=1"):
            return _call(job.task)(cfg)

    main = hydra.main(version_base="1.3", config_path=str(config_root() / job.config_dir), config_name=job.config_name)(task)
    saved = sys.argv
    # argv[0] stays the script that started the process: Lightning's DDP launcher starts the other ranks
    # with `python <argv[0]> <argv[1:]>`. For the `metis` script itself, METIS_JOB names the job to them.
    saved_job = os.environ.get("METIS_JOB")
    os.environ["METIS_JOB"] = job.name
    sys.argv = [saved[0] if saved else f"metis {job.name}", *argv]
    try:
        main()
    finally:
        sys.argv = saved
        if saved_job is None:
            os.environ.pop("METIS_JOB", None)
        else:
            os.environ["METIS_JOB"] = saved_job
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    jobs = [*HYDRA_JOBS, *ARGPARSE_JOBS]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in HYDRA_JOBS and job not in ARGPARSE_JOBS and os.environ.get("METIS_JOB") in HYDRA_JOBS:
        job, rest = os.environ["METIS_JOB"], argv  # a DDP rank started by Lightning from `metis <job> ...`
    if job in HYDRA_JOBS:
        return run_hydra_job(HYDRA_JOBS[job], rest)
    if job in ARGPARSE_JOBS:
        status = _call(ARGPARSE_JOBS[job])(rest)
        return status if isinstance(status, int) else 0  # eval returns its report
    close = difflib.get_close_matches(job, jobs, n=1)
    print(f"metis: no job {job!r}{f'; did you mean `{close[0]}`?' if close else ''} (jobs: {', '.join(jobs)})", file=sys.stderr)
    return 2


def entry() -> None:
    """The `metis` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
