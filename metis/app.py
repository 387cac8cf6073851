"""`metis app`: a web app (Gradio, localhost, offline) to try every inference task on local models.

    metis app                                        # models from ./models and ./outputs, http://127.0.0.1:7860
    metis app --models /data/models --port 8000
    metis app pipeline.metis=/m/metis pipeline.maskgct=/m/MaskGCT pipeline.w2v_bert=/m/w2v-bert-2.0   # the "configured" set
    metis app pipeline=demo                          # the demo's own models (scripts/demo_audio.sh trains them)

Model picker:
  - model set: "configured" (the infer config's `pipeline`, with any `pipeline.*=` overrides given here),
    each preset of configs/infer/pipeline/ whose models are here (`pipeline=demo`), and every folder under --models laid out as the three published repos (`metis/`, `maskgct/` or
    `MaskGCT/`, `w2v-bert-2.0/`), or holding a `pipeline.yaml` of `pipeline.*` keys (paths relative to it:
    other model sizes, the demo models);
  - stage 1: the set's published checkpoint of the task, or any export of this project found under
    --models (`model.safetensors` + `config.json` of a fine-tuned Metis, LoRA fine-tunes included:
    ExportFinetuned writes the merged model beside the LoRA files).
Everything runs on this machine; Gradio's analytics are off and the page loads no remote fonts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis import tasks as registry
from metis.inference.tasks import STAGE1_DEFAULTS, TASKS, Request

PUBLISHED = "(the set's published checkpoint)"
CONFIGURED = "configured"
SR = 24000
# the registry's inference tasks (metis/tasks.py), labelled by the first words of their summary
LABELS = {t: f"{t}: {registry.get(t).summary.split(':')[0]}" for t in TASKS}
# what each Request field is called on the page
FIELDS = {"input": "Input speech (se: noisy, tse: mixture, vc: source)", "prompt": "Prompt speech (speaker reference / enrolment)",
          "text": "Text to speak", "prompt_text": "Transcript of the prompt", "video_features": "Visual features (.npy, (T, 768) at 25 Hz)"}


# ------------------------------------------------------------------------------ finding models


def _published_layout(folder: Path) -> dict[str, str] | None:
    subs = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    w2v = next((p for name, p in subs.items() if name.startswith("w2v-bert")), None)
    if "metis" in subs and "maskgct" in subs and w2v is not None:
        kw = {"metis": str(subs["metis"]), "maskgct": str(subs["maskgct"]), "w2v_bert": str(w2v)}
        if (folder / "stats.safetensors").is_file():
            kw["stats"] = str(folder / "stats.safetensors")
        return kw
    return None


def _pipeline_yaml(folder: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    kw = OmegaConf.to_container(OmegaConf.load(folder / "pipeline.yaml"), resolve=True)
    if not isinstance(kw, dict):
        raise ValueError(f"{folder / 'pipeline.yaml'}: expected a mapping of pipeline keys")
    for key in ("metis", "maskgct", "w2v_bert", "stats", "s2a_1layer", "s2a_full"):
        if isinstance(kw.get(key), str) and not Path(kw[key]).is_absolute() and (folder / kw[key]).exists():
            kw[key] = str(folder / kw[key])
    return kw


def find_model_sets(roots: list[Path]) -> dict[str, dict[str, Any]]:
    """label -> load_pipeline keyword arguments, for each model-set folder in or under `roots` (depth 2)."""
    sets: dict[str, dict[str, Any]] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
            kw = _pipeline_yaml(folder) if (folder / "pipeline.yaml").is_file() else _published_layout(folder)
            if kw is not None:
                sets[str(folder)] = kw
    return sets


@dataclass(frozen=True)
class Export:
    path: Path
    task: str
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.path} ({self.task}{', ' + self.note if self.note else ''})"


def find_exports(roots: list[Path], depth: int = 4) -> list[Export]:
    """This project's fine-tuned stage-1 exports (config.json with an ft_type + model.safetensors)."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        configs = [c for d in range(depth) for c in sorted(root.glob("*/" * d + "config.json"))]
        for config in configs:
            if not (config.parent / "model.safetensors").is_file():
                continue
            try:
                cfg = json.loads(config.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            task = cfg.get("ft_type") if isinstance(cfg, dict) else None
            if not str(cfg.get("_target_", "")).endswith("MetisStage1") or task not in TASKS:
                continue
            lora = sorted(config.parent.glob(f"metis_{task}_lora_*_adapter.safetensors"))
            note = f"LoRA r={lora[0].name.split('_lora_')[1].split('_')[0]}, merged" if lora else "full"
            found.append(Export(config.parent, task, note))
    return found


# ------------------------------------------------------------------------------ running a task


@dataclass
class Models:
    """The model sets and exports the page offers, and the pipelines built so far (one per choice)."""

    sets: dict[str, dict[str, Any]]
    exports: list[Export]
    device: str = "cpu"
    _pipelines: dict[tuple, Any] = field(default_factory=dict)

    def pipeline(self, set_label: str, stage1_label: str, task: str):
        from metis.inference.loading import load_pipeline

        if set_label not in self.sets:
            raise ValueError(f"unknown model set {set_label!r}")
        kw = dict(self.sets[set_label])
        if stage1_label and stage1_label != PUBLISHED:
            export = next((e for e in self.exports if e.label == stage1_label), None)
            if export is None:
                raise ValueError(f"unknown stage-1 export {stage1_label!r}")
            if export.task != task:
                raise ValueError(f"{export.path} is a {export.task} model; pick it with task {export.task}")
            kw["stage1"] = {**dict(kw.get("stage1") or {}), task: str(export.path)}
        if task not in kw.get("tasks", TASKS):
            raise ValueError(f"model set {set_label} serves {', '.join(kw['tasks'])} only")
        key = (set_label, stage1_label, task)
        if key not in self._pipelines:
            kw.setdefault("device", self.device)
            kw["progress"] = False
            self._pipelines[key] = load_pipeline(**{**kw, "tasks": (task,)})
        return self._pipelines[key]


def spectrogram(path_or_wav, sr: int | None = None):
    """A log-magnitude spectrogram image (H, W, 3) uint8 of a file or a (samples,) array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    if isinstance(path_or_wav, (str, os.PathLike)):
        from metis.audio import load_tensor

        wav, sr = load_tensor(path_or_wav, SR), SR
    else:
        wav = torch.as_tensor(path_or_wav, dtype=torch.float32)
    spec = torch.stft(wav.flatten(), n_fft=1024, hop_length=256, window=torch.hann_window(1024), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-5))
    fig, ax = plt.subplots(figsize=(6, 2.2), dpi=100)
    ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=float(db.max()) - 80,
              extent=(0, wav.numel() / sr, 0, sr / 2000))
    ax.set_xlabel("s")
    ax.set_ylabel("kHz")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def run_task(models: Models, set_label: str, stage1_label: str, task: str, input_audio: str | None, prompt_audio: str | None,
             text: str, prompt_text: str, video_features: str | None, n_timesteps: int, cfg: float, temp: float,
             seed: int, target_seconds: float | None):
    """One request from the page's values: (24 kHz audio, input spectrogram, output spectrogram, status)."""
    import numpy as np

    task = task.split(":")[0]
    request = Request(task, input=input_audio or None, prompt=prompt_audio or None, text=text or None,
                      prompt_text=prompt_text or None, video_features=video_features or None, seed=int(seed),
                      target_seconds=float(target_seconds) if target_seconds else None,
                      overrides={"n_timesteps": int(n_timesteps), "cfg": float(cfg), "temp": float(temp)})
    request.validate()
    wav = models.pipeline(set_label, stage1_label, task)(request).float().cpu().flatten().numpy()
    source = input_audio or prompt_audio
    status = f"{task}: {wav.size / SR:.2f} s of audio from {set_label}" + (
        f", stage 1 {stage1_label}" if stage1_label != PUBLISHED else "")
    return (SR, (np.clip(wav, -1, 1) * 32767).astype(np.int16)), spectrogram(source) if source else None, spectrogram(wav, SR), status


# ------------------------------------------------------------------------------ the page


def visible_fields(task: str) -> dict[str, bool]:
    need = registry.get(task.split(":")[0]).request_fields
    return {name: name in need for name in FIELDS}


def build_app(models: Models):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    first = TASKS[0]
    defaults = STAGE1_DEFAULTS[first]
    show = visible_fields(first)
    sets = list(models.sets)
    with gr.Blocks(title="metis") as app:
        gr.Markdown("# metis\nEvery inference task on the models of this machine (nothing leaves it).")
        with gr.Row():
            set_box = gr.Dropdown(sets, value=sets[0] if sets else None, label="Model set", elem_id="model_set")
            stage1_box = gr.Dropdown([PUBLISHED, *(e.label for e in models.exports)], value=PUBLISHED, label="Stage 1",
                                     elem_id="stage1")
            task_box = gr.Radio([LABELS[t] for t in TASKS], value=LABELS[first], label="Task", elem_id="task")
        with gr.Row():
            with gr.Column():
                input_audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label=FIELDS["input"],
                                       visible=show["input"], elem_id="input_audio")
                prompt_audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label=FIELDS["prompt"],
                                        visible=show["prompt"], elem_id="prompt_audio")
                text = gr.Textbox(label=FIELDS["text"], visible=show["text"], elem_id="text")
                prompt_text = gr.Textbox(label=FIELDS["prompt_text"], visible=show["prompt_text"], elem_id="prompt_text")
                video = gr.File(label=FIELDS["video_features"], file_types=[".npy", ".pt"], type="filepath",
                                visible=show["video_features"], elem_id="video_features")
                with gr.Accordion("Settings (stage 1; published defaults per task)", open=True):
                    steps = gr.Slider(1, 100, value=defaults.n_timesteps, step=1, label="steps", elem_id="n_timesteps")
                    cfg = gr.Slider(0, 5, value=defaults.cfg, step=0.1, label="classifier-free guidance", elem_id="cfg")
                    temp = gr.Slider(0.1, 2, value=defaults.temp, step=0.05, label="temperature", elem_id="temp")
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                    target = gr.Number(None, label="tts: output seconds (empty: from the text length)", elem_id="target_seconds",
                                       visible="text" in registry.get(first).request_fields)
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                output_audio = gr.Audio(label="Output (24 kHz)", type="numpy", interactive=False, elem_id="output_audio")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                input_spec = gr.Image(label="Input spectrogram", interactive=False, elem_id="input_spec")
                output_spec = gr.Image(label="Output spectrogram", interactive=False, elem_id="output_spec")

        def on_task(label):
            task = label.split(":")[0]
            vis, d = visible_fields(task), STAGE1_DEFAULTS[task]
            return (gr.update(visible=vis["input"]), gr.update(visible=vis["prompt"]), gr.update(visible=vis["text"]),
                    gr.update(visible=vis["prompt_text"]), gr.update(visible=vis["video_features"]),
                    gr.update(value=d.n_timesteps), gr.update(value=d.cfg), gr.update(value=d.temp),
                    gr.update(visible=vis["text"]))

        task_box.change(on_task, task_box, [input_audio, prompt_audio, text, prompt_text, video, steps, cfg, temp, target])

        def on_run(*values):
            try:
                return run_task(models, *values)
            except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
                raise gr.Error(str(e)) from e

        run.click(on_run, [set_box, stage1_box, task_box, input_audio, prompt_audio, text, prompt_text, video, steps, cfg, temp,
                           seed, target], [output_audio, input_spec, output_spec, status])
    return app


def serve(models: Models, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Build the page and serve it on host:port; with block=False return the running app (tests)."""
    import gradio as gr

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    app = build_app(models)
    app.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=not block, theme=theme,
               prevent_thread_lock=not block, allowed_paths=[tempfile.gettempdir()])
    return app


def preset_sets(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """label -> load_pipeline keyword arguments of the infer config's `pipeline` ("configured", with the
    `pipeline.*` / `pipeline=<preset>` overrides given) and of each preset in configs/infer/pipeline/
    whose models are on this machine (nested `_target_` nodes, e.g. the demo's tokenizers, are built)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from metis.cli import config_root

    def kwargs(extra: list[str]) -> dict[str, Any]:
        with initialize_config_dir(str(config_root() / "infer"), version_base="1.3"):
            cfg = compose("infer", overrides=["device=cpu", *extra])
        return dict(instantiate(cfg.pipeline, _partial_=True, _convert_="all").keywords)

    sets = {CONFIGURED: kwargs(overrides)}
    for preset in sorted((config_root() / "infer" / "pipeline").glob("*.yaml")):
        if f"pipeline={preset.stem}" in overrides:
            continue
        try:
            sets[f"pipeline={preset.stem}"] = kwargs([f"pipeline={preset.stem}"])
        except Exception as e:  # noqa: BLE001 - a preset whose models are not here is left out, and said so
            print(f"metis app: pipeline={preset.stem} left out ({' '.join(str(e).split())[:300]})", flush=True)
    return sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metis app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", action="append", type=Path, help="folders to search for model sets and exports "
                   "(repeatable; default ./models and ./outputs)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 (default cpu)")
    p.add_argument("--num-threads", default="auto", help="torch CPU threads (auto: the free cores; metis/threads.py)")
    p.add_argument("overrides", nargs="*", help="pipeline.*=value overrides of the `configured` set (configs/infer/infer.yaml)")
    a = p.parse_args(argv)
    from metis.threads import set_threads

    set_threads(a.num_threads)
    roots = a.models or [Path("models"), Path("outputs")]
    presets = preset_sets(a.overrides)
    configured = presets.pop(CONFIGURED)
    sets = {**presets, **find_model_sets(roots), CONFIGURED: configured}  # the first is preselected
    models = Models(sets, find_exports(roots), device=a.device)
    print(f"metis app: {len(sets)} model set(s), {len(models.exports)} export(s); http://{a.host}:{a.port}", flush=True)
    serve(models, a.host, a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
