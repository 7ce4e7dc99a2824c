"""Module paths that moved when the package was laid out by role, kept importable for one
release: ``import ppl_ssvae.rundir`` still works, warns once (``DeprecationWarning``) and
returns the module at its new path itself, so that its classes, its private names and a
test's monkeypatching are the same objects under both names."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old path -> new path
MOVED = {
    "ppl_ssvae.rundir": "ppl_ssvae.runs.directory",
    "ppl_ssvae.runkinds": "ppl_ssvae.runs.kinds",
    "ppl_ssvae.runlock": "ppl_ssvae.runs.lock",
    "ppl_ssvae.runconfig": "ppl_ssvae.runs.config",
    "ppl_ssvae.checkpoint": "ppl_ssvae.runs.checkpoint",
    "ppl_ssvae.optim": "ppl_ssvae.training.optim",
    "ppl_ssvae.distributed": "ppl_ssvae.training.distributed",
    "ppl_ssvae.divergence": "ppl_ssvae.training.divergence",
    "ppl_ssvae.init_from": "ppl_ssvae.training.init_from",
    "ppl_ssvae.metrics": "ppl_ssvae.evaluation.metrics",
    "ppl_ssvae.likelihood": "ppl_ssvae.evaluation.likelihood",
    "ppl_ssvae.clustering": "ppl_ssvae.evaluation.clustering",
    "ppl_ssvae.anomaly": "ppl_ssvae.evaluation.anomaly",
    "ppl_ssvae.compare": "ppl_ssvae.evaluation.compare",
    "ppl_ssvae.inspect": "ppl_ssvae.evaluation.inspect",
    "ppl_ssvae.baselines": "ppl_ssvae.evaluation.baselines",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path in ``MOVED`` and loads it as the module at its new path."""

    def find_spec(self, name: str, path: object = None, target: object = None):  # noqa: ANN201
        if name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=_importer_level(),
        )
        module = importlib.import_module(new)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the real module: give it back.
        module.__spec__ = self._real_spec


def _importer_level() -> int:
    """The stack level of the line that imported the old path, so that the warning names
    the user's file. ``warnings`` itself skips the import system's frozen frames when it
    counts levels, so only the other frames are counted here, up to the first that is
    neither this module nor ``importlib.import_module``."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        if "importlib" in name and "_bootstrap" in name:
            frame = frame.f_back
            continue
        if name != __file__ and name != importlib.__file__:
            return level
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
