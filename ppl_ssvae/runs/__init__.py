"""Runs: ``RunSpec`` (one typed definition of a run), ``load_run`` (the one way back from a
run directory) and the run directory itself (``RunDir``: its kinds, lock, checked config
and verified checkpoints).

The names are imported on first use: the training loop imports the run directory's modules
(``runs.directory``, ``runs.checkpoint``), while ``load_run`` imports the training loop, so
an eager import here would make the two packages import each other half-initialised."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CallbackSpec": "spec", "DataSpec": "spec", "ModelSpec": "spec", "RunSpec": "spec",
    "LoadedRun": "load", "load_run": "load", "key_values": "files", "read_spec_file": "files",
    "to_toml": "files", "RunDir": "directory",
}  # fmt: skip

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
