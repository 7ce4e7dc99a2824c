"""Runs: ``RunSpec`` (one typed definition of a run) and ``load_run`` (the one way back
from a run directory)."""

from .files import key_values, read_spec_file, to_toml
from .load import LoadedRun, load_run
from .spec import CallbackSpec, DataSpec, ModelSpec, RunSpec

__all__ = [
    "CallbackSpec", "DataSpec", "LoadedRun", "ModelSpec", "RunSpec", "key_values", "load_run",
    "read_spec_file", "to_toml",
]  # fmt: skip
