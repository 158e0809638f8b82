"""Import paths from before the engine/commands/stages layout (2026-11-26) keep working.

A user project made by an earlier ``brevpipe init`` imports ``brevpipe.components``; scripts
import ``brevpipe.predictor``; a Hydra config names ``brevpipe.sweep.MlflowSweepCallback``. Each
such module is the new one under its old name (the same module object), with a
DeprecationWarning; a module that was split in two or more gets an ImportError naming where
each of its functions went.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "brevpipe.app": "brevpipe.commands.run",
    "brevpipe.artifacts": "brevpipe.engine.artifacts",
    "brevpipe.checkpoint": "brevpipe.engine.checkpoint",
    "brevpipe.cli": "brevpipe.commands.cli",
    "brevpipe.components": "brevpipe.engine.components",
    "brevpipe.config": "brevpipe.engine.config",
    "brevpipe.dag": "brevpipe.engine.dag",
    "brevpipe.job": "brevpipe.engine.job",
    "brevpipe.liveness": "brevpipe.engine.liveness",
    "brevpipe.predictor": "brevpipe.serving.predictor",
    "brevpipe.rerun": "brevpipe.engine.rerun",
    "brevpipe.runner": "brevpipe.engine.runner",
    "brevpipe.schema": "brevpipe.engine.schema",
    "brevpipe.schema_command": "brevpipe.commands.schema",
    "brevpipe.seeding": "brevpipe.engine.seeding",
    "brevpipe.settings": "brevpipe.engine.settings",
    "brevpipe.storage": "brevpipe.engine.storage",
    "brevpipe.sweep": "brevpipe.integrations.sweep",
    "brevpipe.tracking": "brevpipe.integrations.tracking",
    "brevpipe.train": "brevpipe.models.training",
    "brevpipe.user_project": "brevpipe.commands.init",
}
SPLIT = {
    "brevpipe.registry": "list_jobs, get_job: brevpipe.engine.records; describe, statistics: "
    "brevpipe.engine.job_details; request_stop, stop_requested, clear_stop, stop_callback: "
    "brevpipe.engine.control; stop_job, set_archived: brevpipe.integrations.lifecycle; "
    "main: brevpipe.commands.jobs",
    "brevpipe.predict": "resolve_model, model_archive_url: brevpipe.serving.resolve; "
    "expand_images, predict_images: brevpipe.serving.batch; main: brevpipe.commands.predict",
    "brevpipe.serve": "ModelService: brevpipe.serving.service; create_app: brevpipe.serving.app; "
    "make_token: brevpipe.serving.auth; main: brevpipe.commands.serve",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} is now {self.new}: import that (the old name goes away in "
                      "a later release)", DeprecationWarning, stacklevel=2)  # fmt: skip
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module ran when it was imported


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`MOVED` under their old names; refuses those of :data:`SPLIT`
    with where their names went."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name in MOVED:
            return importlib.util.spec_from_loader(name, _Alias(MOVED[name]))
        if name in SPLIT:
            raise ModuleNotFoundError(f"{name} was split by the 2026-11-26 layout: {SPLIT[name]}",
                                      name=name)  # fmt: skip
        return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
