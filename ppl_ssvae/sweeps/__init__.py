"""Sweeps: grids and searches over run settings, on Optuna, whose trials are ordinary
run directories; and reports across runs (mean ± sd over seeds, figures).

``SweepSpec`` reads a sweep file (a run spec plus ``[sweep]``), ``create_sweep`` makes
the sweep directory and its study, ``run_worker`` works on it (any number at once, on one
machine or many), ``report_runs`` groups runs into a table. Names are imported on first
use, so that the callback a trial's run records (``sweep_trial``) is registered without
importing Optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SweepSpec": "spec", "Param": "params", "Sweep": "storage", "create_sweep": "storage",
    "open_sweep": "storage", "run_worker": "worker", "ReportToTrial": "pruning",
    "Report": "report", "report_runs": "report", "write_report": "report",
}  # fmt: skip

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
