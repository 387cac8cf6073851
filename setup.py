"""Build hook (everything else is in pyproject.toml): a wheel carries the clone's configs/ as
metis/configs, so an installed `metis` finds its Hydra recipes (metis.cli.config_root) wherever it runs.
The folder stays at the top of the clone, where `python train.py` and the docs expect it."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the clone's configs/ directly
            return
        for src in sorted(CONFIGS.rglob("*.yaml")):
            rel = src.relative_to(CONFIGS)
            if rel.parts[0] == "local":  # machine-specific overrides (gitignored) stay on the machine
                continue
            dst = Path(self.build_lib, "metis", "configs", rel)
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))


setup(cmdclass={"build_py": BuildPyWithConfigs})
